"""Signing in and out, and who the caller is."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.security import OAuth2PasswordRequestForm
from starlette.concurrency import run_in_threadpool

from indexer.governance.accounts import authenticate, revoke_token
from search_api.access import PUBLIC, RADIOLOGY, allow
from search_api.deps import (
    ApiSettingsDep,
    AuditDep,
    CatalogDep,
    JwtSecretDep,
    LoginLimiterDep,
    PrincipalDep,
)
from search_api.errors import ERROR_RESPONSES, StrictJsonRoute
from search_api.schemas import ErrorOut, LogoutOut, MeOut, TokenOut
from search_api.security import issue_token

router = APIRouter(route_class=StrictJsonRoute)


@router.post(
    "/token",
    response_model=TokenOut,
    responses={401: {"model": ErrorOut}, 422: {"model": ErrorOut}, 429: {"model": ErrorOut}},
    dependencies=[allow(PUBLIC, "login")],
)
async def login(
    request: Request,
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    audit: AuditDep,
    catalog: CatalogDep,
    limiter: LoginLimiterDep,
    limits: ApiSettingsDep,
    secret: JwtSecretDep,
) -> TokenOut:
    """OAuth2 password flow: form fields username and password; answers a signed, expiring JWT."""
    client = request.client.host if request.client else "unknown"
    audit.user(form.username)
    wait = limiter.allow(client, form.username)
    if wait is not None:
        raise HTTPException(
            429, "too many sign-in attempts; wait a minute", headers={"Retry-After": str(math.ceil(wait))}
        )
    account = await run_in_threadpool(authenticate, catalog, form.username, form.password)
    if account is None:
        raise HTTPException(401, "wrong username or password", headers={"WWW-Authenticate": "Bearer"})
    audit.role(account.role)
    minutes = limits.token_minutes
    return TokenOut(
        access_token=issue_token(secret, account, minutes),
        expires_in=minutes * 60,
        username=account.username,
        role=account.role,  # type: ignore[arg-type]
    )


# Not audited: the UI asks on every page refresh, and the answer holds no patient data.
@router.get("/me", response_model=MeOut, responses=ERROR_RESPONSES, dependencies=[allow(RADIOLOGY, None)])
def me(principal: PrincipalDep) -> MeOut:
    """Who the credentials belong to."""
    return MeOut(username=principal.username, role=principal.role, auth=principal.auth)  # type: ignore[arg-type]


@router.post(
    "/logout", response_model=LogoutOut, responses=ERROR_RESPONSES, dependencies=[allow(RADIOLOGY, "logout")]
)
def logout(principal: PrincipalDep, catalog: CatalogDep) -> LogoutOut:
    """Sign out: the presented bearer token is refused from now on, by every worker (the catalog keeps
    its id until it would have expired). API keys stay valid until an admin revokes them."""
    if principal.auth != "token" or principal.token_id is None or principal.token_expires is None:
        return LogoutOut(
            revoked=False, detail="only bearer tokens are signed out; API keys are revoked by an admin"
        )
    revoke_token(catalog, principal.token_id, datetime.fromtimestamp(principal.token_expires, UTC))
    return LogoutOut(revoked=True, detail="signed out: this token is refused from now on")
