"""Opaque cursors for keyset pagination over time-ordered ids."""

from __future__ import annotations

import base64
import binascii

from vivix.kit.errors import InvalidParams
from vivix.kit.ids import is_uuid

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = base64.urlsafe_b64decode(padded.encode("ascii")).decode()
    except (binascii.Error, UnicodeError, ValueError):
        raise InvalidParams("cursor", "not a cursor returned by this API") from None
    if not is_uuid(value):
        raise InvalidParams("cursor", "not a cursor returned by this API")
    return value


def parse_limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        raise InvalidParams("limit", f"must be an integer from 1 to {MAX_LIMIT}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidParams("limit", f"must be an integer from 1 to {MAX_LIMIT}")
    return limit
