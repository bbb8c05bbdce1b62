"""The FastAPI application, wired: a lifespan that opens the archive once, middleware, routers, error handlers.

Routes live in search_api.routes, each declaring beside itself who may call it; create_app (and the
lifespan, for routes added later) refuses to start when a route declares nothing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from indexer.archive import Archive
from indexer.cases import CaseManager
from indexer.governance.accounts import limit_password_hashing, list_accounts
from indexer.governance.pseudonym import load_or_create_key
from indexer.settings import IndexerSettings
from indexer.storage.pacs_reader import install_pacs_reader
from indexer.vectors.sync import PeriodicRefresh
from search_api.access import check_route_access
from search_api.errors import install_error_handlers
from search_api.explanations import Explainer
from search_api.log_redaction import install_log_redaction
from search_api.routes import ROUTERS, pixels
from search_api.searcher import Searcher
from search_api.security import LoginLimiter, SecurityMiddleware, is_loopback
from search_api.settings import ApiSettings

log = logging.getLogger(__name__)

DESCRIPTION = (
    "Content-based medical image retrieval: send an image, get the most similar past cases. "
    "Sign in with POST /token (OAuth2 password flow) and send `Authorization: Bearer <token>`; "
    "service accounts send `X-API-Key`."
)


def check_can_start(settings: ApiSettings, archive: Archive) -> None:
    """Refuse to serve beyond loopback without authentication: no dev mode, and at least one admin."""
    if is_loopback(settings.host):
        if settings.auth_disabled:
            log.warning(
                "AUTHENTICATION DISABLED (MEDCBIR_API_AUTH_DISABLED): development mode, loopback only"
            )
        return
    if settings.auth_disabled:
        raise RuntimeError(
            f"refusing to serve on {settings.host} with MEDCBIR_API_AUTH_DISABLED set: development mode "
            "is for 127.0.0.1 only; unset it and create users with `medcbir users create`"
        )
    if not any(a.role == "admin" and not a.disabled for a in list_accounts(archive.catalog)):
        raise RuntimeError(
            f"refusing to serve on {settings.host} with no user accounts: create the first admin with "
            "`medcbir users create --admin --username NAME` first"
        )


def jwt_secret(limits: ApiSettings, archive: Archive) -> bytes:
    """The token signing key: MEDCBIR_API_JWT_SECRET (at least 32 characters), else DATA_DIR/jwt.key."""
    secret = limits.jwt_secret.get_secret_value().encode() if limits.jwt_secret else None
    if secret is not None and len(secret) < 32:
        raise RuntimeError("MEDCBIR_API_JWT_SECRET must be at least 32 characters")
    return secret or load_or_create_key(archive.settings.data_dir / "jwt.key")


def create_app(
    settings: IndexerSettings | None = None,
    api_settings: ApiSettings | None = None,
    archive: Archive | None = None,
) -> FastAPI:
    """Build the app; the archive (catalog, encoder, index) is opened once, at startup."""
    limits = api_settings or ApiSettings()
    install_log_redaction()
    limit_password_hashing(limits.password_hash_concurrency)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        check_route_access(app)  # again: a route added after create_app must declare its access too
        opened = archive if archive is not None else Archive.open(settings or IndexerSettings())
        try:
            check_can_start(limits, opened)
            searcher = Searcher(
                opened, max_pixels=limits.max_pixels, index_poll_seconds=limits.index_poll_seconds
            )
            getattr(opened.encoder, "backend", None)  # choose the forward pass now, not at the first query
            app.state.api_settings = limits
            app.state.searcher = searcher
            app.state.case_manager = CaseManager(opened, searcher.index_lock, limits.max_pixels)
            app.state.explainer = Explainer(
                opened, limits.max_pixels, head_source=lambda: searcher.predictors().head
            )
            app.state.jwt_secret = jwt_secret(limits, opened)
            app.state.login_limiter = LoginLimiter(limits.login_attempts_per_minute)
            install_pacs_reader(opened.catalog)  # images ingested from a PACS are read back by WADO-RS
        except BaseException:
            if archive is None:
                opened.close()
            raise
        log.info("search API ready: %d vectors, encoder %s", len(opened.index), opened.encoder.name)
        # Other processes write the same catalog: take in their rows every few seconds (see /health).
        follower = PeriodicRefresh(opened.refresh_index, limits.index_poll_seconds).start()
        try:
            yield
        finally:
            follower.stop()
            if archive is None:
                opened.close()

    app = FastAPI(title="medcbir search API", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.add_middleware(SecurityMiddleware, fastapi_app=app)
    if limits.cors_origins:  # closed unless origins are named
        app.add_middleware(
            CORSMiddleware,
            allow_origins=limits.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )
    if limits.trusted_proxies:  # outermost: the client every other layer sees is the resolved one
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=limits.trusted_proxies)
    for router in [*ROUTERS, pixels.router]:
        app.include_router(router)
    install_error_handlers(app)
    check_route_access(app)
    return app
