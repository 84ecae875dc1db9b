"""Verifying webhook deliveries (API.md §5.1), both signature schemes:

- `X-Vivix-Signature: sha256=<hex>`: HMAC-SHA256 of the raw body, keyed with the whole
  secret string (`whsec_…`, UTF-8).
- Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>
  …`): HMAC-SHA256 of `{id}.{timestamp}.{body}`, keyed with the base64-decoded part of the
  secret after `whsec_`; the timestamp must be recent (replay protection).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from vivix_client.errors import WebhookVerificationError

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_S = 300


def verify_webhook(
    payload: bytes | str,
    headers: Mapping[str, str],
    secret: str | Iterable[str],
    *,
    scheme: Literal["auto", "standard", "vivix"] = "auto",
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> dict[str, Any]:
    """The delivery's event (the parsed JSON body) when its signature is valid for one of
    the `secret`s (pass both during a rotation); raises WebhookVerificationError otherwise.
    `payload` must be the raw body exactly as received. `scheme="auto"` checks the
    Standard Webhooks signature when present (it also proves freshness), else X-Vivix-Signature."""
    body = payload.encode() if isinstance(payload, str) else bytes(payload)
    lowered = {name.lower(): value for name, value in headers.items()}
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets:
        raise WebhookVerificationError("no secret given")
    use_standard = scheme == "standard" or (scheme == "auto" and "webhook-signature" in lowered)
    if use_standard:
        _verify_standard(body, lowered, secrets, tolerance_s, time.time() if now is None else now)
    else:
        _verify_vivix(body, lowered, secrets)
    try:
        event: dict[str, Any] = json.loads(body)
    except ValueError as exc:
        raise WebhookVerificationError("the body is not JSON") from exc
    return event


def _verify_vivix(body: bytes, headers: Mapping[str, str], secrets: list[str]) -> None:
    header = headers.get("x-vivix-signature")
    if not header:
        raise WebhookVerificationError("missing X-Vivix-Signature header")
    given = header.strip().removeprefix("sha256=")
    for secret in secrets:
        expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        if hmac.compare_digest(expected, given):
            return
    raise WebhookVerificationError("X-Vivix-Signature does not match")


def _verify_standard(
    body: bytes, headers: Mapping[str, str], secrets: list[str], tolerance_s: int, now: float
) -> None:
    message_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (message_id and timestamp and signatures):
        raise WebhookVerificationError(
            "missing webhook-id, webhook-timestamp or webhook-signature header"
        )
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    if abs(now - sent_at) > tolerance_s:
        raise WebhookVerificationError(
            f"webhook-timestamp is {int(now - sent_at)} s away from now (tolerance {tolerance_s} s)"
        )
    signed = f"{message_id}.{timestamp}.".encode() + body
    given = [
        part.split(",", 1)[1]
        for part in signatures.split()
        if part.startswith("v1,") and "," in part
    ]
    for secret in secrets:
        key = _standard_key(secret)
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        if any(hmac.compare_digest(expected, candidate) for candidate in given):
            return
    raise WebhookVerificationError("webhook-signature does not match")


def _standard_key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("the secret is not a whsec_<base64> secret") from None
