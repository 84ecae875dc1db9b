"""Routes of this area are added as its pages land."""

from __future__ import annotations

from fastapi import APIRouter

from vivix.studio.web import StudioRoute

router = APIRouter(route_class=StudioRoute)
