"""Log configuration: readable lines on stderr, no customer data, no credentials.

- Exceptions are rendered as plain tracebacks. structlog's default (rich) traceback prints
  every frame's local variables: customer prompts, request scopes with API keys, settings
  with provider credentials. Plain tracebacks show code and exception text only.
- Every rendered value passes `redact`: the secrets this process knows (provider API
  keys, the admin token, the key-hashing secret) and anything shaped like a Vivix API key
  or an Authorization credential are replaced before a line is written. Operator-facing
  error text stored in the database (`last_error`) passes the same filter.

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


def _stderr_logger(*_args: Any) -> structlog.PrintLogger:
    return structlog.PrintLogger(sys.stderr)


def configure_logging(level: str = "info", secrets: Iterable[str | None] = ()) -> None:
    register_secrets(secrets)
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=True),
            # The traceback as plain text (no locals) in `exception`, before redaction.
            structlog.processors.format_exc_info,
            _redact_event,
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback
            ),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # sys.stderr as it is when a line is written (tests and daemons replace it).
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
