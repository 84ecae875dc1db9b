"""Without VIVIX_WEBHOOKS__ALLOW_INSECURE_TARGETS, webhook targets must be https:// and
resolve only to public addresses: refused when saved (422 on `url`) and again at every
attempt, before any connection, so nothing reaches a listener on this machine even when
a name that resolved publicly at save time resolves to loopback later (DNS rebinding),
or when an endpoint saved under the insecure setting is sent after it was turned off.

DNS is the runtime's resolver (a dict here): no lookup leaves this machine."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.factories import AccountWithKey, account_with_key
from tests.webhooks.receiver import Receiver, wait_until
from vivix.runtime import Runtime
from vivix.webhooks import service
from vivix.webhooks.sender import WebhookSender

PUBLIC = "93.184.216.34"


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {
        "worker": {"poll_interval_seconds": 0.2},
        "webhooks": {"retry_schedule": "60", "timeout_seconds": 2.0},
    }


@pytest.fixture
def v6_receiver() -> Iterator[Receiver | None]:
    if not _has_ipv6_loopback():
        yield None
        return
    with Receiver("::1") as running:
        yield running


class Dns:
    def __init__(self) -> None:
        self.answers: dict[str, list[str]] = {}

    async def __call__(self, host: str, port: int, /) -> list[str]:
        return list(self.answers.get(host, []))


def targets(receiver: Receiver, v6: Receiver | None) -> list[str]:
    found = [
        f"https://127.0.0.1:{receiver.port}/hook",
        "https://169.254.169.254/latest/meta-data",
        f"https://10.20.30.40:{receiver.port}/hook",
        f"https://loopback.example.com:{receiver.port}/hook",
        "https://metadata.example.com/hook",
        "https://private.example.com/hook",
    ]
    if v6 is not None:
        found.append(f"https://[::1]:{v6.port}/hook")
    return found


def dns_for(runtime: Runtime) -> Dns:
    dns = Dns()
    dns.answers = {
        "loopback.example.com": ["127.0.0.1"],
        "metadata.example.com": ["169.254.169.254"],
        "private.example.com": [PUBLIC, "10.0.0.7"],  # one bad answer is enough
    }
    runtime.resolver = dns
    return dns


async def test_forbidden_targets_are_refused_at_save(
    runtime: Runtime,
    client: httpx.AsyncClient,
    receiver: Receiver,
    v6_receiver: Receiver | None,
) -> None:
    dns_for(runtime)
    acct = await account_with_key(runtime)
    plain = f"http://127.0.0.1:{receiver.port}/hook"
    for url in [*targets(receiver, v6_receiver), plain]:
        response = await client.post("/api/v1/webhooks", json={"url": url}, headers=acct.headers)
        assert response.status_code == 422, (url, response.text)
        assert (response.json()["error"], response.json()["field"]) == ("INVALID_PARAMS", "url")
    assert receiver.connections == 0
    assert v6_receiver is None or v6_receiver.connections == 0


async def test_forbidden_targets_are_refused_at_send_without_a_connection(
    runtime: Runtime,
    client: httpx.AsyncClient,
    receiver: Receiver,
    v6_receiver: Receiver | None,
) -> None:
    dns = dns_for(runtime)
    dns.answers["rebind.example.com"] = [PUBLIC]
    # Saved while they were allowed (the insecure setting on), sent after it was turned off.
    insecure = runtime.settings.model_copy(deep=True)
    insecure.webhooks.allow_insecure_targets = True
    then = dataclasses.replace(runtime, settings=insecure)
    hooks: list[tuple[AccountWithKey, dict[str, Any]]] = []
    for url in targets(receiver, v6_receiver):  # one account each: at most 5 per account
        owner = await account_with_key(runtime)
        hooks.append((owner, await service.create_for_account(then, owner.id, {"url": url})))
    acct = await account_with_key(runtime)
    # Public when saved, loopback when sent (DNS rebinding).
    rebind = await client.post(
        "/api/v1/webhooks",
        json={"url": f"https://rebind.example.com:{receiver.port}/hook"},
        headers=acct.headers,
    )
    assert rebind.status_code == 201, rebind.text
    hooks.append((acct, rebind.json()))
    dns.answers["rebind.example.com"] = ["127.0.0.1"]

    queued = []
    for owner, hook in hooks:
        response = await client.post(f"/api/v1/webhooks/{hook['id']}/test", headers=owner.headers)
        queued.append((owner, hook, response.json()["id"]))
    sender = WebhookSender(runtime, "egress-test")
    await sender.start()
    try:
        await wait_until(lambda: sender.sent >= len(queued), what="every attempt")
    finally:
        await sender.stop()
    for owner, hook, delivery_id in queued:
        detail = (
            await client.get(
                f"/api/v1/webhooks/{hook['id']}/deliveries/{delivery_id}", headers=owner.headers
            )
        ).json()
        [attempt] = detail["attempt_log"]
        assert attempt["status_code"] is None, hook["url"]
        assert attempt["error"].startswith("refused by the egress guard"), attempt["error"]
        assert detail["status"] == "pending"  # retried later (the schedule), never sent
    assert receiver.connections == 0
    assert v6_receiver is None or v6_receiver.connections == 0


async def test_https_to_a_public_address_is_attempted_at_the_checked_address(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    """The positive side, without leaving the machine: the request goes to the address the
    guard checked (not a new lookup), carrying the name for Host and TLS."""
    dns = dns_for(runtime)
    dns.answers["hooks.example.com"] = [PUBLIC]
    acct = await account_with_key(runtime)
    created = await client.post(
        "/api/v1/webhooks", json={"url": "https://hooks.example.com/in"}, headers=acct.headers
    )
    assert created.status_code == 201
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    hook = created.json()
    await client.post(f"/api/v1/webhooks/{hook['id']}/test", headers=acct.headers)
    sender = WebhookSender(runtime, "pin-test", transport=httpx.MockTransport(answer))
    await sender.start()
    try:
        await wait_until(lambda: sender.sent >= 1, what="the attempt")
    finally:
        await sender.stop()
    [request] = seen
    assert request.url.host == PUBLIC
    assert request.url.scheme == "https"
    assert request.headers["host"] == "hooks.example.com"
    assert request.extensions["sni_hostname"] == "hooks.example.com"
