"""Webhook secrets: made, kept and used to sign.

A secret is `whsec_` + base64 of 32 random bytes, shown to its owner once. It must be able
to sign later, so it is stored encrypted (AES-256-GCM under a key derived from the
server's VIVIX_SECRET_KEY with HKDF, the endpoint id as associated data: a ciphertext
copied to another row does not decrypt there), never hashed and never logged.

Both signature schemes of API.md §5.1:
- `X-Vivix-Signature: sha256=<hex HMAC-SHA256(secret string as UTF-8, raw body)>`
- `webhook-signature: v1,<base64 HMAC-SHA256(base64-decoded secret after whsec_,
  "{webhook-id}.{webhook-timestamp}.{raw body}")>` (Standard Webhooks), one entry per
  secret that is valid right now, separated by spaces.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from functools import lru_cache

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SECRET_PREFIX = "whsec_"
SHOWN_PREFIX_LENGTH = 12  # "whsec_" + 6 characters: enough to tell two secrets apart
_FORMAT = "v1:"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(os.urandom(32)).decode("ascii")


def shown_prefix(secret: str) -> str:
    return secret[:SHOWN_PREFIX_LENGTH]


@lru_cache(maxsize=8)
def _cipher(server_secret: str) -> AESGCM:
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"vivix webhook secrets v1"
    ).derive(server_secret.encode("utf-8"))
    return AESGCM(key)


def encrypt_secret(server_secret: str, endpoint_id: str, secret: str) -> str:
    nonce = os.urandom(12)
    sealed = _cipher(server_secret).encrypt(nonce, secret.encode("utf-8"), endpoint_id.encode())
    return _FORMAT + base64.b64encode(nonce + sealed).decode("ascii")


def decrypt_secret(server_secret: str, endpoint_id: str, stored: str) -> str:
    """The secret; raises ValueError when it can't be decrypted (another server secret)."""
    if not stored.startswith(_FORMAT):
        raise ValueError("unknown webhook secret format")
    raw = base64.b64decode(stored[len(_FORMAT) :])
    try:
        plain = _cipher(server_secret).decrypt(raw[:12], raw[12:], endpoint_id.encode())
    except Exception:  # cryptography's InvalidTag carries nothing worth keeping
        raise ValueError("webhook secret does not decrypt with this VIVIX_SECRET_KEY") from None
    return plain.decode("utf-8")


def vivix_signature(secret: str, body: bytes) -> str:
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def standard_signature(secrets: list[str], delivery_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    entries = []
    for secret in secrets:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :])
        mac = hmac.new(key, signed, hashlib.sha256).digest()
        entries.append("v1," + base64.b64encode(mac).decode("ascii"))
    return " ".join(entries)
