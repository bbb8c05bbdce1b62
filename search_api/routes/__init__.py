"""The API's routers; each route declares beside itself who may call it and what it audits."""

from __future__ import annotations

from fastapi import APIRouter

from search_api.routes import admin, auth, cases, explain, pacs, refine, search, series

# In the order the OpenAPI document lists them.
ROUTERS: list[APIRouter] = [
    auth.router,
    search.router,
    pacs.router,
    refine.router,
    series.router,
    explain.router,
    cases.router,
    admin.router,
]
