"""Identifiers: UUIDv7 for time-ordered rows, random tokens for secrets and request ids."""

from __future__ import annotations

import os
import secrets
import string
import threading
import time
import uuid

_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
_lock = threading.Lock()
_last_ms = 0
_last_counter = 0


def uuid7() -> str:
    """A UUIDv7 string: 48-bit ms timestamp, then a 12-bit counter seeded randomly per ms
    so ids made in one process are strictly increasing, then 62 random bits."""
    global _last_ms, _last_counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms = ms
            _last_counter = secrets.randbits(11)  # leave headroom before overflow
        else:
            _last_counter += 1
            if _last_counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                _last_ms += 1
                _last_counter = 0
            ms = _last_ms
        counter = _last_counter
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand
    return str(uuid.UUID(int=value))


def new_uuid() -> str:
    return str(uuid.uuid4())


def base62(length: int) -> str:
    """Uniform random base62 from one os.urandom call (rejection sampling on 6-bit values:
    62 of 64 values are kept, so no modulo bias)."""
    out: list[str] = []
    while len(out) < length:
        for byte in os.urandom(length + 8):
            value = byte & 0x3F
            if value < 62:
                out.append(_BASE62[value])
                if len(out) == length:
                    break
    return "".join(out)


def is_base62(text: str) -> bool:
    return all(c in _BASE62 for c in text)


def request_id() -> str:
    return "req_" + base62(20)


def is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except (ValueError, AttributeError, TypeError):
        return False
    return len(text) == 36
