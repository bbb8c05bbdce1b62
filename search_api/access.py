"""Who may call which route: each route declares its `Rule` beside itself, and a route without one is refused.

A route declares its rule as a dependency, `dependencies=[allow(RADIOLOGY, "search")]`, next to its
path. SecurityMiddleware reads it (through `route_rule`) before the route runs; create_app and the
lifespan call `check_route_access`, so an app with an undeclared route does not start.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import fastapi.routing
from fastapi import Depends, FastAPI, HTTPException, Request, params
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Scope

# FastAPI >= 0.16x keeps an included router as one lazy entry of app.routes; its routes are reached
# through route contexts. Older FastAPI copies included routes into app.routes.
_iter_route_contexts = getattr(fastapi.routing, "iter_route_contexts", None)

Role = Literal["radiologist", "admin"]
RADIOLOGY: frozenset[str] = frozenset({"radiologist", "admin"})
ADMIN: frozenset[str] = frozenset({"admin"})
PUBLIC: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Rule:
    """Who may call a route (an empty set: anyone, unauthenticated) and the audit action it records."""

    roles: frozenset[str]
    # None: not audited. Only for reads that hold no patient data and that pages repeat on every refresh
    # (liveness, documentation, who am I, the filter vocabulary); data access and actions name an action.
    action: str | None

    @property
    def public(self) -> bool:
        return not self.roles


class Access:
    """A route's declaration of who may call it, as a dependency beside the route:
    `dependencies=[allow(RADIOLOGY, "search")]`. SecurityMiddleware reads it before the route runs;
    as a dependency it checks once more that the middleware let only those roles through."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule

    def __call__(self, request: Request) -> None:
        if self.rule.public:
            return
        principal = request.scope.get("state", {}).get("principal")
        if not isinstance(principal, Principal):
            raise HTTPException(401, "sign in first: POST /token", headers={"WWW-Authenticate": "Bearer"})
        if principal.role not in self.rule.roles:
            raise HTTPException(403, f"the {principal.role} role may not do this ({self.rule.action})")


def allow(roles: frozenset[str], action: str | None) -> params.Depends:
    """Declare, beside a route, the roles that may call it (PUBLIC: anyone) and the audit action it records."""
    return Depends(Access(Rule(roles, action)))


def route_rule(route: BaseRoute, public_paths: Iterable[str] = ()) -> Rule | None:
    """The rule a route declares with `allow(...)`; FastAPI's own documentation routes (`public_paths`)
    are public; anything else has none (and is refused)."""
    if isinstance(route, APIRoute):
        rules = [d.dependency.rule for d in route.dependencies if isinstance(d.dependency, Access)]
        return rules[0] if len(rules) == 1 else None
    if isinstance(route, Route) and route.path in set(public_paths):
        return Rule(PUBLIC, None)
    return None


def documentation_paths(app: FastAPI) -> list[str]:
    """The paths of the OpenAPI document and its viewers, which anyone may read."""
    paths = [app.openapi_url, app.docs_url, app.redoc_url]
    if app.docs_url:
        paths.append(app.swagger_ui_oauth2_redirect_url)
    return [p for p in paths if p]


def check_route_access(app: FastAPI) -> None:
    """Fail closed at start-up: every route must declare who may call it (exactly one `allow(...)`)."""
    public = documentation_paths(app)
    undeclared = [
        f"{','.join(sorted(getattr(route, 'methods', None) or []))} {getattr(route, 'path', route)}"
        for route, _ in app_routes(app.router.routes)
        if route_rule(route, public) is None
    ]
    if undeclared:
        raise RuntimeError(
            "routes without an access declaration (add dependencies=[allow(ROLES, action)] beside "
            "each): " + "; ".join(undeclared)
        )


@dataclass(frozen=True)
class Principal:
    """Who is calling, with the role read from the catalog on this request."""

    username: str
    role: str
    auth: Literal["token", "api_key", "dev"]
    token_id: str | None = None  # the JWT's jti (what POST /logout revokes)
    token_expires: int | None = None  # the JWT's exp, seconds since the epoch

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def app_routes(routes: Iterable[BaseRoute]) -> Iterator[tuple[BaseRoute, Any]]:
    """Every route of an app, included routers' routes too: (the route as declared, what matches requests)."""
    if _iter_route_contexts is None:
        for route in routes:
            yield route, route
        return
    for context in _iter_route_contexts(list(routes)):
        yield context.original_route, context


def find_route(routes: Iterable[BaseRoute], scope: Scope) -> tuple[BaseRoute | None, dict[str, Any]]:
    """The route the router will pick (a full match, else a path-only match), as declared, and its path params."""
    partial: tuple[BaseRoute | None, dict[str, Any]] = (None, {})
    for route, matcher in app_routes(routes):
        match, child = matcher.matches(scope)
        if match == Match.FULL:
            return route, dict(child.get("path_params", {}))
        if match == Match.PARTIAL and partial[0] is None:
            partial = (route, dict(child.get("path_params", {})))
    return partial
