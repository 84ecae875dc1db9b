"""Password hashing with argon2id (argon2-cffi's RFC 9106 low-memory profile).

Hashing costs tens of milliseconds of CPU by design, so it runs in a worker thread and
never blocks the event loop."""

from __future__ import annotations

import asyncio
import secrets
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_LENGTH = 10
MAX_LENGTH = 1024  # argon2 takes any length; this only bounds the work a request can ask for
_HASHER = PasswordHasher()


def check_strength(password: str) -> str | None:
    """Why this password is refused, or None."""
    if len(password) < MIN_LENGTH:
        return f"must be at least {MIN_LENGTH} characters"
    if len(password) > MAX_LENGTH:
        return f"must be at most {MAX_LENGTH} characters"
    if password.strip() == "" or len(set(password)) < 4:
        return "is too easy to guess"
    return None


def generate_password() -> str:
    """A random password for users created by an operator (shown once)."""
    return secrets.token_urlsafe(15)


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_HASHER.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    """True when `password` matches. With no hash (unknown email) a stand-in hash is
    verified anyway, so the answer takes as long as for a real user."""
    target = password_hash or _stand_in_hash()
    try:
        matched = await asyncio.to_thread(_HASHER.verify, target, password[:MAX_LENGTH])
    except (VerificationError, InvalidHashError):
        return False
    return matched and password_hash is not None


def needs_rehash(password_hash: str) -> bool:
    return _HASHER.check_needs_rehash(password_hash)


@cache
def _stand_in_hash() -> str:
    return _HASHER.hash(secrets.token_hex(16))
