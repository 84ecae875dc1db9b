"""Log configuration: readable lines on stderr, no customer data, no credentials.

- Exceptions are rendered as plain tracebacks. structlog's default (rich) traceback prints
  every frame's local variables: customer prompts, request scopes with API keys, settings
  with provider credentials. Plain tracebacks show code and exception text only.
- Every rendered value passes `redact`: the secrets this process knows (provider API
  keys, the admin token, the key-hashing secret) and anything shaped like a Vivix API key
  or an Authorization credential are replaced before a line is written. Operator-facing
  error text stored in the database (`last_error`) passes the same filter.

Format: `console` (one readable line per event, for people) or `json` (one JSON object per
line, for a log collector: `VIVIX_LOG_FORMAT=json`). Lines written by libraries through the
standard `logging` module (uvicorn, SQLAlchemy, alembic) go through the same processors, so
in JSON mode every line on stderr is a JSON object.

Context: every line written while a request or a job runs carries `request_id`,
`account_id` and `generation_id` (null until known). The API binds them in
`kit.http.ResponseHeadersMiddleware` (then the gate adds the account, the generation
endpoints the generation); the worker binds them for each job it runs (`bind_job`). They
live in contextvars, so concurrent requests and jobs (each its own asyncio task) never
see each other's.

Never log a prompt or a parameter value: log ids, codes and counts.

`configure_logging` is called where the runtime is built (never at import); calling it
again replaces the configuration and adds the new secrets.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

CONTEXT_KEYS = ("request_id", "account_id", "generation_id")
REDACTED = "[redacted]"
# Shorter values would redact ordinary words; real credentials are longer.
_MIN_SECRET_LENGTH = 8
_SHAPES = re.compile(
    r"vvx_(?:live|test)_[A-Za-z0-9]{8,}"  # our API keys (even cut short)
    r"|whsec_[A-Za-z0-9+/=]{8,}"  # webhook secrets
    r"|(?i:\b(?:bearer|key|token|basic)\s+)[A-Za-z0-9._~+/=:-]{12,}"  # Authorization values
)
_secrets: set[str] = set()


def register_secrets(values: Iterable[str | None]) -> None:
    """Values that must never appear in a log line or stored error text."""
    for value in values:
        if value and len(value) >= _MIN_SECRET_LENGTH:
            _secrets.add(value)


def redact(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _SHAPES.sub(_redact_shape, text)


def _redact_shape(match: re.Match[str]) -> str:
    found = match.group(0)
    scheme, space, _ = found.partition(" ")
    return f"{scheme} {REDACTED}" if space and not found.startswith("vvx_") else REDACTED


def _redact_event(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact(value)
        elif not isinstance(value, int | float | bool | type(None)):
            shown = repr(value)
            cleaned = redact(shown)
            if cleaned != shown:
                event[key] = cleaned
    return event


def bind_request(request_id: str) -> Any:
    """Start a request's log context (its account and generation unknown yet); returns
    the tokens `reset_context` takes to restore the previous context."""
    return structlog.contextvars.bind_contextvars(
        request_id=request_id, account_id=None, generation_id=None
    )


def bind_job(request_id: str | None, account_id: str, generation_id: str) -> Any:
    """A job's log context: the request that submitted it, its account and generation."""
    return structlog.contextvars.bind_contextvars(
        request_id=request_id, account_id=account_id, generation_id=generation_id
    )


def bind_account(account_id: str) -> None:
    structlog.contextvars.bind_contextvars(account_id=account_id)


def bind_generation(generation_id: str) -> None:
    structlog.contextvars.bind_contextvars(generation_id=generation_id)


def reset_context(tokens: Any) -> None:
    structlog.contextvars.reset_contextvars(**tokens)


def current_request_id() -> str | None:
    """The request id of the request being served in this context (None outside one)."""
    value = structlog.contextvars.get_contextvars().get("request_id")
    return value if isinstance(value, str) else None


def _stderr_logger(*_args: Any) -> structlog.PrintLogger:
    return structlog.PrintLogger(sys.stderr)


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(
            fmt="iso" if _format == "json" else "%Y-%m-%d %H:%M:%S", utc=True
        ),
        # The traceback as plain text (no locals) in `exception`, before redaction.
        structlog.processors.format_exc_info,
        _redact_event,
    ]


def _renderer() -> Any:
    if _format == "json":
        return structlog.processors.JSONRenderer()
    return structlog.dev.ConsoleRenderer(
        colors=False, exception_formatter=structlog.dev.plain_traceback
    )


_format = "console"
_debug = True  # structlog's default, until configure_logging sets a level


def debug_enabled() -> bool:
    """Whether debug lines are written: lets a hot path skip building one that is not (a
    call on a `structlog.get_logger()` proxy binds a new logger first, ~4 µs)."""
    return _debug


def configure_logging(
    level: str = "info", secrets: Iterable[str | None] = (), log_format: str = "console"
) -> None:
    global _format, _debug
    register_secrets(secrets)
    _format = str(log_format)
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    _debug = numeric <= logging.DEBUG
    structlog.configure(
        processors=[*_shared_processors(), _renderer()],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # sys.stderr as it is when a line is written (tests and daemons replace it).
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    # Lines of libraries that use `logging` (uvicorn, alembic): same processors, same
    # renderer, on stderr.
    handler = _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                *_shared_processors(),
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _renderer()],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    # Libraries' chatter (httpx logs every request with its URL at INFO) stays out; their
    # warnings and errors come through.
    root.setLevel(max(numeric, logging.WARNING))
    # uvicorn's own handlers print plain text: its records go to the root handler instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        library = logging.getLogger(name)
        library.handlers = []
        library.propagate = True
        library.setLevel(numeric)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to sys.stderr as it is at the time of each line (tests replace it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass
