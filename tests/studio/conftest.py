from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from vivix.app import create_app
from vivix.runtime import Runtime


@asynccontextmanager
async def browser_client(runtime: Runtime, address: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client that behaves like a browser towards the Studio: keeps cookies, does
    not follow redirects (tests look at them), asks for HTML, comes from `address`."""
    app = create_app(runtime.settings, runtime=runtime)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=(address, 5000))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver", headers={"Accept": "text/html"}
    ) as http:
        yield http


@pytest.fixture
async def browser(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with browser_client(runtime, "198.51.100.7") as http:
        yield http


@pytest.fixture
async def other_browser(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with browser_client(runtime, "198.51.100.8") as http:
        yield http
