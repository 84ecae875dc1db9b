"""verify_webhook() against deliveries signed exactly as API.md §5.1 specifies (the
signatures are computed here from the spec, independently of the SDK's code)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets

import pytest

from vivix_client import WebhookVerificationError, verify_webhook

NOW = 1_800_000_000


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def delivery(
    body: dict[str, object], *signing_secrets: str, timestamp: int = NOW
) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    delivery_id = "5f0c2a8e-1111-4222-8333-444455556666"
    signed = f"{delivery_id}.{timestamp}.".encode() + raw
    standard = " ".join(
        "v1,"
        + base64.b64encode(
            hmac.new(base64.b64decode(s.removeprefix("whsec_")), signed, hashlib.sha256).digest()
        ).decode()
        for s in signing_secrets
    )
    headers = {
        "Content-Type": "application/json",
        "X-Vivix-Event": str(body["event"]),
        "X-Vivix-Delivery-Id": delivery_id,
        "X-Vivix-Signature": "sha256="
        + hmac.new(signing_secrets[0].encode(), raw, hashlib.sha256).hexdigest(),
        "webhook-id": delivery_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": standard,
    }
    return raw, headers


EVENT = {"event": "generation.completed", "generation_id": "g1", "status": "completed"}


def test_both_schemes_verify_and_return_the_event() -> None:
    secret = new_secret()
    raw, headers = delivery(EVENT, secret)
    assert verify_webhook(raw, headers, secret, now=NOW) == EVENT
    assert verify_webhook(raw, headers, secret, scheme="standard", now=NOW) == EVENT
    vivix_only = {k: v for k, v in headers.items() if not k.startswith("webhook-")}
    assert verify_webhook(raw.decode(), vivix_only, secret) == EVENT
    assert verify_webhook(raw, headers, secret, scheme="vivix") == EVENT


def test_tampered_body_or_wrong_secret_is_refused_by_both_schemes() -> None:
    secret = new_secret()
    raw, headers = delivery(EVENT, secret)
    tampered = raw.replace(b"completed", b"failed")
    for scheme in ("standard", "vivix"):
        with pytest.raises(WebhookVerificationError):
            verify_webhook(tampered, headers, secret, scheme=scheme, now=NOW)  # type: ignore[arg-type]
        with pytest.raises(WebhookVerificationError):
            verify_webhook(raw, headers, new_secret(), scheme=scheme, now=NOW)  # type: ignore[arg-type]


def test_standard_webhooks_timestamps_outside_the_tolerance_are_refused() -> None:
    secret = new_secret()
    raw, headers = delivery(EVENT, secret, timestamp=NOW - 301)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify_webhook(raw, headers, secret, now=NOW)
    assert verify_webhook(raw, headers, secret, now=NOW, tolerance_s=600) == EVENT


def test_during_a_rotation_either_secret_verifies() -> None:
    old, new = new_secret(), new_secret()
    raw, headers = delivery(EVENT, new, old)  # one signature entry per valid secret
    assert verify_webhook(raw, headers, old, now=NOW) == EVENT
    assert verify_webhook(raw, headers, new, now=NOW) == EVENT
    assert verify_webhook(raw, headers, [new_secret(), new], now=NOW) == EVENT


def test_missing_headers_say_what_is_missing() -> None:
    with pytest.raises(WebhookVerificationError, match="X-Vivix-Signature"):
        verify_webhook(b"{}", {}, new_secret())
    with pytest.raises(WebhookVerificationError, match="webhook-id"):
        verify_webhook(b"{}", {"webhook-signature": "v1,abc"}, new_secret())
