"""Every route declares who may call it beside itself; an undeclared route stops the app and is refused."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from search_api.access import RADIOLOGY, allow, check_route_access, route_rule
from search_api.app import create_app
from search_api.security import SecurityMiddleware
from search_api.settings import ApiSettings


def test_create_app_declares_every_route() -> None:
    check_route_access(create_app(api_settings=ApiSettings()))


def test_an_undeclared_route_stops_create_app() -> None:
    app = FastAPI()
    app.include_router(APIRouter())

    @app.get("/declared", dependencies=[allow(RADIOLOGY, "look")])
    def declared() -> dict[str, str]:
        return {}

    check_route_access(app)

    @app.get("/forgotten")
    def forgotten() -> dict[str, str]:
        return {}

    with pytest.raises(RuntimeError, match="/forgotten"):
        check_route_access(app)


def test_an_undeclared_router_route_stops_create_app() -> None:
    router = APIRouter()

    @router.get("/inside")
    def inside() -> dict[str, str]:
        return {}

    app = FastAPI()
    app.include_router(router)
    with pytest.raises(RuntimeError, match="/inside"):
        check_route_access(app)


def test_a_route_added_after_create_app_stops_start_up() -> None:
    app = create_app(api_settings=ApiSettings())

    @app.get("/late")
    def late() -> dict[str, str]:
        return {}

    # the lifespan checks before it opens any archive
    with pytest.raises(RuntimeError, match="/late"), TestClient(app):
        pass


def test_two_declarations_are_no_declaration() -> None:
    app = FastAPI()

    @app.get("/twice", dependencies=[allow(RADIOLOGY, "a"), allow(RADIOLOGY, "b")])
    def twice() -> dict[str, str]:
        return {}

    route = next(r for r in app.routes if getattr(r, "path", "") == "/twice")
    assert route_rule(route) is None
    with pytest.raises(RuntimeError, match="/twice"):
        check_route_access(app)


def test_the_middleware_refuses_an_undeclared_route() -> None:
    """Fail closed at request time too, for an app that skipped the start-up check."""
    app = FastAPI()
    app.add_middleware(SecurityMiddleware, fastapi_app=app)

    @app.get("/forgotten")
    def forgotten() -> dict[str, str]:
        return {"secret": "data"}

    response = TestClient(app).get("/forgotten")
    assert response.status_code == 403
    assert "not classified" in response.json()["detail"]
