"""Security headers on every response (STUDIO.md): a Content-Security-Policy without
inline scripts or styles on the Studio's pages, no framing, no MIME sniffing, and a
referrer policy that keeps URLs (generation ids, filters) on this site."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The API's JSON, the operator API and the interactive docs (which load their own
# scripts) keep their own rules; everything else is the Studio.
_NOT_STUDIO = ("/api/", "/admin/", "/files/", "/docs", "/redoc", "/openapi.json", "/metrics")


def content_security_policy(storage_public_url: str | None) -> str:
    """Scripts and styles only from this origin (the vendored htmx and studio.js, the one
    CSS file); media also from the output bucket when it is served from elsewhere."""
    media = "'self'"
    if storage_public_url:
        parts = urlsplit(storage_public_url)
        if parts.scheme in ("http", "https") and parts.netloc:
            media += f" {parts.scheme}://{parts.netloc}"
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; "
        f"img-src {media}; media-src {media}; font-src 'self'; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, *, storage_public_url: str | None = None) -> None:
        self.app = app
        self.common = [
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"same-origin"),
            (b"x-frame-options", b"DENY"),
        ]
        self.studio = [
            *self.common,
            (b"content-security-policy", content_security_policy(storage_public_url).encode()),
            (b"cross-origin-opener-policy", b"same-origin"),
            (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=()"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        extra = self.common if path.startswith(_NOT_STUDIO) else self.studio

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name for name, _ in headers}
                # A response that set its own policy (the API docs pages) keeps it.
                message["headers"] = headers + [(k, v) for k, v in extra if k not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)
