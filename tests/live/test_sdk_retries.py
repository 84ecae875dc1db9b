"""Retries that never charge twice: one Idempotency-Key per logical submit, reused on every
attempt; Retry-After honoured; a lost answer replayed, not resubmitted."""

from __future__ import annotations

import uuid

import httpx

from tests.live.conftest import LiveServer
from tests.live.sdk import RecordedSleeps, RecordingTransport
from vivix_client import RateLimited, Vivix


def test_retry_after_429_reuses_the_idempotency_key_and_charges_once(
    live_server: LiveServer,
) -> None:
    """A second submit meets CONCURRENCY_LIMIT (429) while the first renders; the client
    backs off and resubmits with the same key until it is admitted, exactly once."""
    account = live_server.account(concurrent_jobs=1)
    tag = uuid.uuid4().hex
    transport = RecordingTransport()
    with Vivix(
        account.key, base_url=live_server.base_url, transport=transport, max_retries=12
    ) as client:
        first = client.generate("vivix-local-video", "slow", duration=5, metadata={"t": tag})
        second = client.run(
            "vivix-local-image", "waits its turn", resolution="1K", metadata={"t": tag}
        )
        assert second.succeeded
        attempts = [
            s
            for s in transport.submits()
            if s.idempotency_key != transport.submits()[0].idempotency_key
        ]
        assert attempts[0].status == 429, attempts
        assert attempts[-1].status == 201
        assert len({a.idempotency_key for a in attempts}) == 1
        assert attempts[0].idempotency_key
        mine = [g for g in client.list(metadata={"t": tag})]
        assert [g.id for g in mine] == [second.id, first.id], "one generation per logical submit"
        first_done = client.wait(first.id, timeout=180)
        spent = (first_done.credits_used or 0) + (second.credits_used or 0)
        credits = client.credits()
        assert credits.balance == 15000 - spent
        assert credits.spent_this_cycle == spent
        assert live_server.ledger_sum(account.name) == credits.balance


def test_a_lost_answer_is_retried_with_the_same_key_and_replayed_not_charged_twice(
    live_server: LiveServer,
) -> None:
    account = live_server.account()
    dropped: list[str] = []

    def drop_first_submit_answer(request: httpx.Request, response: httpx.Response) -> bool:
        if request.url.path == "/api/v1/generate" and not dropped:
            dropped.append(response.json()["generation_id"])
            return True
        return False

    transport = RecordingTransport(drop_after=drop_first_submit_answer)
    sleeps = RecordedSleeps()
    with Vivix(
        account.key, base_url=live_server.base_url, transport=transport, sleep=sleeps
    ) as client:
        generation = client.generate("vivix-local-image", "once", resolution="1K", wait=60)
        submits = transport.submits()
        assert [s.status for s in submits] == [201, 200]  # created, then replayed
        assert submits[0].idempotency_key == submits[1].idempotency_key
        assert generation.id == dropped[0]
        assert len(sleeps) == 1
        assert [g.id for g in client.list()] == [generation.id]
        assert client.credits().balance == 15000 - (generation.credits_used or 0)


def test_rate_limit_retry_waits_as_long_as_retry_after_says(live_server: LiveServer) -> None:
    account = live_server.account(calls_per_minute=2)
    transport = RecordingTransport()
    sleeps = RecordedSleeps()
    with Vivix(
        account.key, base_url=live_server.base_url, transport=transport, max_retries=1, sleep=sleeps
    ) as client:
        client.credits()
        client.credits()
        try:
            client.generate("vivix-local-image", "limited")
        except RateLimited as error:
            limited = error
        else:
            raise AssertionError("the third call of the minute must be refused")
    submits = transport.submits()
    assert len(submits) == 2
    assert [s.status for s in submits] == [429, 429]
    assert submits[0].idempotency_key == submits[1].idempotency_key
    # The recorded wait is what the server's Retry-After said (the sleep returned at once).
    assert len(sleeps) == 1
    assert 1 <= sleeps[0] <= 60
    assert abs(sleeps[0] - limited.retry_after) <= 1
