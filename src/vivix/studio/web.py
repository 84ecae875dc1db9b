"""The Studio's web plumbing: templates, the signed-in viewer, CSRF, and the route class
that turns domain errors into pages.

Pages are plain Request → Response handlers (like the API's `PlainRoute`): they parse
their own forms and render templates; business rules stay in the services they call."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from vivix.kit.clock import as_utc, iso, utcnow
from vivix.kit.errors import CsrfRejected, VivixError
from vivix.kit.http import runtime_of
from vivix.kit.logging import bind_account
from vivix.users import service
from vivix.users.service import SESSION_COOKIE, Viewer

if TYPE_CHECKING:
    from vivix.runtime import Runtime

# Before sign-in there is no session: the sign-in and sign-up forms use a double-submit
# token (this cookie must equal the form's hidden field).
FORM_COOKIE = "vivix_form"
THEME_COOKIE = "vivix_theme"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
STATIC_DIR = Path(__file__).parent / "static"
HTMX_FILE = "vendor/htmx-2.0.11.min.js"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class SignInRequired(Exception):
    """Raised by a page that needs a viewer; answered with a redirect to the sign-in page."""


class PageNotFound(VivixError):
    status = 404
    code = "NOT_FOUND"
    default_message = "There is nothing here."
    default_next = "Check the address, or go back to your history."


def web_of(request: Request) -> StudioWeb:
    web: StudioWeb = request.app.state.studio
    return web


async def viewer_of(request: Request) -> Viewer | None:
    """The signed-in viewer, resolved once per request."""
    state = request.scope.setdefault("state", {})
    if "studio_viewer" not in state:
        state["studio_viewer"] = await service.resolve_viewer(
            runtime_of(request), request.cookies.get(SESSION_COOKIE)
        )
    viewer: Viewer | None = state["studio_viewer"]
    if viewer is not None:
        bind_account(viewer.account.id)
    return viewer


async def require_viewer(request: Request) -> Viewer:
    viewer = await viewer_of(request)
    if viewer is None:
        raise SignInRequired()
    return viewer


async def require_operator(request: Request) -> Viewer:
    viewer = await require_viewer(request)
    if not viewer.is_operator:
        # Not a 403: a non-operator learns nothing about which operator pages exist.
        raise PageNotFound()
    return viewer


async def read_form(request: Request, viewer: Viewer | None) -> FormData:
    """The posted form, after the CSRF check: the session's token (form field or the
    header htmx sends) or, before sign-in, the double-submit cookie; and a same-origin
    `Origin` when the browser sends one."""
    form = await request.form()
    origin = request.headers.get("origin")
    if origin is not None and not _same_origin(request, origin):
        raise CsrfRejected()
    given = request.headers.get(CSRF_HEADER) or str(form.get(CSRF_FIELD) or "")
    expected = viewer.csrf_token if viewer is not None else request.cookies.get(FORM_COOKIE, "")
    if not expected or not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise CsrfRejected()
    return form


def _same_origin(request: Request, origin: str) -> bool:
    parts = urlsplit(origin)
    host = request.headers.get("host", "")
    return parts.scheme in ("http", "https") and parts.netloc == host


def form_token(request: Request) -> str:
    """The double-submit token for forms shown before sign-in (reused while the cookie lives)."""
    existing = request.cookies.get(FORM_COOKIE)
    if existing and len(existing) <= 64:
        return existing
    state = request.scope.setdefault("state", {})
    token: str = state.setdefault("studio_form_token", secrets.token_urlsafe(24))
    return token


def safe_next(raw: str | None) -> str:
    """Where to go after sign-in: a path on this site only (no `//host`, no scheme)."""
    if not raw or not raw.startswith("/") or raw.startswith("//") or "\\" in raw:
        return "/generate"
    return raw


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def cookie_secure(runtime: Runtime) -> bool:
    return runtime.settings.resolved_public_url.startswith("https://")


def redirect(url: str) -> Response:
    """303 after a POST; htmx follows `HX-Redirect` with a full page load instead."""
    return RedirectResponse(url, status_code=303)


class StudioStaticFiles(StaticFiles):
    """The Studio's CSS, JS, font and icons. Links carry a content hash (`?v=`), so a
    versioned response may be cached for good."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code == 200:
            versioned = b"v=" in scope.get("query_string", b"")
            response.headers["Cache-Control"] = (
                "public, max-age=31536000, immutable" if versioned else "public, max-age=300"
            )
        return response


class StudioWeb:
    """The template environment and rendering, built once per app."""

    def __init__(self, runtime_settings_public_url: str) -> None:
        self.env = Environment(
            loader=PackageLoader("vivix.studio", "templates"),
            autoescape=select_autoescape(["html", "svg"]),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.public_url = runtime_settings_public_url
        self.static_versions = {
            path.relative_to(STATIC_DIR).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()[
                :10
            ]
            for path in STATIC_DIR.rglob("*")
            if path.is_file()
        }
        self.env.globals.update(static=self.static_url, htmx_file=HTMX_FILE, icon=icon)
        self.env.filters.update(
            credits=format_credits,
            ago=time_ago,
            when=format_when,
            iso=iso,
            duration_ms=format_duration_ms,
            signed=format_signed,
            urlq=lambda value: quote(str(value), safe=""),
        )

    def static_url(self, name: str) -> str:
        version = self.static_versions.get(name, "0")
        return f"/static/{name}?v={version}"

    def render_fragment(self, template: str, context: Mapping[str, Any]) -> str:
        return self.env.get_template(template).render(**context)

    def fragment(
        self,
        request: Request,
        template: str,
        context: Mapping[str, Any],
        viewer: Viewer,
        status: int = 200,
    ) -> HTMLResponse:
        """A piece of a page for htmx to swap in."""
        html = self.render_fragment(
            template, {**context, "viewer": viewer, "csrf_token": viewer.csrf_token}
        )
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    def page(
        self,
        request: Request,
        template: str,
        context: Mapping[str, Any] | None = None,
        *,
        viewer: Viewer | None = None,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> HTMLResponse:
        values: dict[str, Any] = {
            "request": request,
            "viewer": viewer,
            "path": request.url.path,
            "theme": _theme(request),
            "csrf_token": viewer.csrf_token if viewer is not None else form_token(request),
            "public_url": self.public_url,
            "flash": None,
        }
        values.update(context or {})
        body = self.env.get_template(template).render(**values)
        response = HTMLResponse(body, status_code=status, headers=dict(headers or {}))
        response.headers["Cache-Control"] = "no-store"
        if viewer is None and request.cookies.get(FORM_COOKIE) != values["csrf_token"]:
            response.set_cookie(
                FORM_COOKIE,
                values["csrf_token"],
                httponly=True,
                samesite="strict",
                secure=cookie_secure(runtime_of(request)),
                path="/",
            )
        return response


def _theme(request: Request) -> str:
    theme = request.cookies.get(THEME_COOKIE, "")
    return theme if theme in ("light", "dark") else "auto"


class StudioRoute(APIRoute):
    """A page: the endpoint takes the Request (and path params) and returns a Response.
    Domain errors become an error page with their status; a page that needs a viewer
    redirects anonymous visitors to the sign-in page."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handle(request: Request) -> Response:
            try:
                response: Response = await endpoint(request, **request.path_params)
            except SignInRequired:
                target = request.url.path
                if request.url.query:
                    target += "?" + request.url.query
                url = "/signin?next=" + quote(target, safe="/")
                if is_htmx(request):
                    return Response(status_code=204, headers={"HX-Redirect": url})
                return RedirectResponse(url, status_code=303)
            except VivixError as exc:
                return await error_page(request, exc)
            return response

        return handle


async def error_page(request: Request, exc: VivixError) -> Response:
    viewer = await viewer_of(request)
    return web_of(request).page(
        request,
        "error.html",
        {"error": exc},
        viewer=viewer,
        status=exc.status,
        headers=exc.headers,
    )


def wants_html(request: Request) -> bool:
    """A browser navigating to a Studio path (not the API, admin or files)."""
    path = request.url.path
    if path.startswith(("/api/", "/admin/", "/files/")):
        return False
    return "text/html" in request.headers.get("accept", "")


# Template filters.


def format_credits(value: int | None) -> str:
    return "—" if value is None else f"{value:,}".replace(",", "\u202f")


def format_signed(value: int) -> str:
    sign = "+" if value > 0 else "−" if value < 0 else ""
    return sign + format_credits(abs(value))


def time_ago(value: datetime | None) -> str:
    if value is None:
        return "never"
    seconds = int((utcnow() - as_utc(value)).total_seconds())
    if seconds < 45:
        return "just now"
    for size, unit in ((86400 * 30, "mo"), (86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def format_when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return as_utc(value).strftime("%d %b %Y, %H:%M UTC")


def format_duration_ms(value: int | None) -> str:
    if value is None:
        return "—"
    if value < 1000:
        return f"{value} ms"
    seconds = value / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"


def icon(name: str) -> Markup:
    """An inline SVG icon by name (no icon font, no external request)."""
    return Markup(f'<svg class="icon" aria-hidden="true"><use href="#i-{name}"></use></svg>')
