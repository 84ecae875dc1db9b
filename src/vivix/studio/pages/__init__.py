"""The Studio's pages, one module per area; `router` holds them all."""

from __future__ import annotations

from fastapi import APIRouter

from vivix.studio.pages import auth, generate, history, operator, settings, usage, webhooks
from vivix.studio.web import StudioRoute

router = APIRouter(route_class=StudioRoute, include_in_schema=False)
for module in (auth, generate, history, usage, settings, webhooks, operator):
    router.include_router(module.router)

__all__ = ["router"]
