"""`/docs` (Swagger UI) and `/redoc` (ReDoc) over `/openapi.json`, with their assets
vendored in `static/` and served by the app: the pages work with no network at all. A
Content-Security-Policy lets them load nothing from anywhere else."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
ASSETS_PATH = "/docs/assets"

# 'unsafe-inline' styles: both UIs set style attributes from JavaScript. ReDoc searches in a
# Web Worker it builds from a blob: URL.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_HEAD = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} — API reference</title>
<link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
"""
SWAGGER_PAGE = (
    _HEAD
    + """<link rel="stylesheet" href="{assets}/swagger-ui.css">
</head>
<body data-openapi-url="{openapi_url}">
<div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{assets}/swagger-init.js"></script>
</body>
</html>
"""
)
REDOC_PAGE = (
    _HEAD
    + """</head>
<body>
<redoc spec-url="{openapi_url}"></redoc>
<script src="{assets}/redoc.standalone.js"></script>
</body>
</html>
"""
)


def install_docs_pages(app: FastAPI, openapi_url: str = "/openapi.json") -> None:
    app.mount(ASSETS_PATH, StaticFiles(directory=STATIC_DIR), name="docs-assets")

    def page(template: str) -> HTMLResponse:
        html = template.format(title=app.title, assets=ASSETS_PATH, openapi_url=openapi_url)
        return HTMLResponse(html, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return page(SWAGGER_PAGE)

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return page(REDOC_PAGE)
