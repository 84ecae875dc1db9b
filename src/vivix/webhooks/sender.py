"""Sending deliveries: runs in worker processes only (`worker.runner.Worker` starts one).

A sender claims due deliveries (`repository.claim_next_delivery`, a lease like jobs'),
sends up to `webhooks.concurrency` at once and records every attempt. Deliveries its own
worker queues while it has room come leased to it from the settlement transaction
(`lease_for`, then `send_leased` after the commit): the common path from a completion to
the request has no claim query and no NOTIFY. It also wakes when this process queues
claimable deliveries (`Runtime.on_webhooks_queued`), when another process's NOTIFY
arrives (PostgreSQL), and otherwise polls (`worker.poll_interval_seconds`), which is also
how retries that come due are found.

One attempt: the target is checked by the egress guard and the request sent to the
checked address (`targets.pin_target`), redirects are never followed, the whole attempt
(connecting included) has `webhooks.timeout_seconds`, and only the first 2 KiB of the
answer are read. Any 2xx is success; 410 Gone fails the delivery and disables the
endpoint at once; anything else is retried on `webhooks.retry_schedule`, then `failed`.
An endpoint whose attempts all failed for `disable_after_failing_days` is disabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import httpx
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from vivix.kit.clock import utcnow
from vivix.kit.egress import UrlRefused
from vivix.kit.logging import redact
from vivix.kit.metrics import observe_webhook_delivery
from vivix.models import DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from vivix.webhooks import repository
from vivix.webhooks.secrets import decrypt_secret, standard_signature, vivix_signature
from vivix.webhooks.service import set_enabled
from vivix.webhooks.targets import pin_target

if TYPE_CHECKING:
    from vivix.runtime import Runtime

log = structlog.get_logger(__name__)

USER_AGENT = "Vivix-Webhook/1.0"
RESPONSE_KEPT_BYTES = 2048
# The lease outlives the attempt's timeout (recording it, a slow database): 2 × timeout + 5 s.
LEASE_MARGIN_S = 5.0
GONE = 410


@dataclass(frozen=True, slots=True)
class AttemptResult:
    status_code: int | None
    latency_ms: int
    error: str | None
    response_body: str | None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class WebhookSender:
    def __init__(
        self,
        runtime: Runtime,
        owner: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.runtime = runtime
        self.owner = owner
        settings = runtime.settings.webhooks
        self.concurrency = settings.concurrency
        self.lease = timedelta(seconds=2 * settings.timeout_seconds + LEASE_MARGIN_S)
        # Used directly, not through httpx.AsyncClient: no redirects, no environment
        # proxies or .netrc, no cookies; one connection per attempt, bound to its name.
        self._transport = transport or httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_keepalive_connections=0), retries=0
        )
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self.sent = 0

    def wake(self) -> None:
        self._wake.set()

    def lease_for(self, count: int) -> tuple[str, datetime] | None:
        """(owner, until) for `count` deliveries being queued in this process, if this
        sender has room for them now; None: queue them claimable."""
        if self._stopping.is_set() or len(self._running) + count > self.concurrency:
            return None
        return self.owner, utcnow() + self.lease

    def send_leased(self, leased: Sequence[tuple[WebhookDelivery, WebhookEndpoint]]) -> None:
        """Send deliveries leased by `lease_for`, now committed. A stopping sender drops
        them: their lease expires and a worker claims them."""
        if self._stopping.is_set():
            return
        for claimed in leased:
            self._spawn(claimed)

    def _spawn(self, claimed: tuple[WebhookDelivery, WebhookEndpoint]) -> None:
        task = asyncio.create_task(self._deliver(claimed), name=f"webhook-{claimed[0].id}")
        self._running.add(task)
        task.add_done_callback(self._done)

    async def start(self) -> None:
        self.runtime.on_webhooks_queued.append(self.wake)
        self.runtime.webhook_sender = self
        self._loop_task = asyncio.create_task(self._claim_loop(), name="vivix-webhooks")

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop claiming; attempts in flight get `grace_s`, then are cut off (their lease
        expires and another worker sends them again: at least once, never lost)."""
        self._stopping.set()
        self._wake.set()
        if self.runtime.webhook_sender is self:
            self.runtime.webhook_sender = None
        if self.wake in self.runtime.on_webhooks_queued:
            self.runtime.on_webhooks_queued.remove(self.wake)
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self._running:
            await asyncio.wait(list(self._running), timeout=grace_s)
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        await self._transport.aclose()

    async def _claim_loop(self) -> None:
        poll = self.runtime.settings.worker.poll_interval_seconds
        while not self._stopping.is_set():
            self._wake.clear()
            while len(self._running) < self.concurrency and not self._stopping.is_set():
                try:
                    claimed = await self._claim()
                except Exception as exc:
                    log.warning("webhook_claim_failed", error=repr(exc))
                    claimed = None
                if claimed is None:
                    break
                self._spawn(claimed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=poll)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._wake.set()  # a slot is free

    async def _claim(self) -> tuple[WebhookDelivery, WebhookEndpoint] | None:
        async with self.runtime.db.transaction() as session:
            delivery = await repository.claim_next_delivery(
                session, self.owner, utcnow(), self.lease
            )
            if delivery is None:
                return None
            endpoint = await repository.find_endpoint(session, None, delivery.endpoint_id)
        assert endpoint is not None  # a delivery goes with its endpoint (FK, cascade)
        return delivery, endpoint

    async def _deliver(self, claimed: tuple[WebhookDelivery, WebhookEndpoint]) -> None:
        delivery, endpoint = claimed
        try:
            result = await self.attempt(delivery, endpoint)
            await self._record(delivery, endpoint, result)
        except Exception as exc:  # a bug or the database: the lease expires, it is retried
            log.error("webhook_delivery_crashed", delivery_id=delivery.id, exc_info=exc)

    def _secrets(self, endpoint: WebhookEndpoint) -> list[str]:
        secrets = [decrypt_secret(self.runtime.secret, endpoint.id, endpoint.secret_encrypted)]
        expires = endpoint.previous_secret_expires_at
        if endpoint.previous_secret_encrypted and expires is not None and expires > utcnow():
            secrets.append(
                decrypt_secret(self.runtime.secret, endpoint.id, endpoint.previous_secret_encrypted)
            )
        return secrets

    async def attempt(self, delivery: WebhookDelivery, endpoint: WebhookEndpoint) -> AttemptResult:
        """One HTTP attempt of `delivery`; never raises for what the target does."""
        timeout_s = self.runtime.settings.webhooks.timeout_seconds
        started = time.monotonic()

        def result(
            status: int | None = None, error: str | None = None, body: str | None = None
        ) -> AttemptResult:
            latency = int((time.monotonic() - started) * 1000)
            return AttemptResult(status, latency, None if error is None else redact(error), body)

        try:
            secrets = self._secrets(endpoint)
        except ValueError as exc:
            return result(error=str(exc))
        body = delivery.body.encode("utf-8")
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Accept-Encoding": "identity",
            "X-Vivix-Event": delivery.event,
            "X-Vivix-Delivery-Id": delivery.id,
            "X-Vivix-Signature": vivix_signature(secrets[0], body),
            "webhook-id": delivery.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": standard_signature(secrets, delivery.id, timestamp, body),
        }
        deadline = started + timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                pinned = await pin_target(self.runtime, endpoint.url)
                request = httpx.Request(
                    "POST",
                    pinned.url,
                    headers={**pinned.headers, **headers},
                    content=body,
                    extensions={
                        **pinned.extensions,
                        "timeout": httpx.Timeout(timeout_s).as_dict(),
                    },
                )
                response = await self._transport.handle_async_request(request)
        except UrlRefused as exc:
            return result(error=f"refused by the egress guard: {exc.reason}")
        except TimeoutError:
            return result(error=f"timed out after {timeout_s:g} s")
        except httpx.TimeoutException:
            return result(error=f"timed out after {timeout_s:g} s")
        except httpx.HTTPError as exc:
            return result(error=f"{type(exc).__name__}: {exc}")
        try:
            kept = await _read_start(response, max(0.0, deadline - time.monotonic()))
        finally:
            await response.aclose()
        status = response.status_code
        error = None
        if 300 <= status < 400:
            location = response.headers.get("location", "")
            error = f"HTTP {status}: redirects are not followed (Location: {location[:200]})"
        elif not 200 <= status < 300:
            error = f"HTTP {status}"
        return result(status, error, kept)

    async def _record(
        self, delivery: WebhookDelivery, endpoint: WebhookEndpoint, result: AttemptResult
    ) -> None:
        now = utcnow()
        settings = self.runtime.settings.webhooks
        gone = result.status_code == GONE
        values: dict[str, object] = {
            "last_status_code": result.status_code,
            "last_error": None if result.error is None else result.error[:500],
            "last_latency_ms": result.latency_ms,
        }
        if result.succeeded:
            outcome = DeliveryStatus.SUCCEEDED
            values.update(delivered_at=now, next_attempt_at=None)
        elif not gone and delivery.attempts <= len(settings.retry_schedule):
            outcome = DeliveryStatus.PENDING
            delay = settings.retry_schedule[delivery.attempts - 1]
            values.update(next_attempt_at=now + timedelta(seconds=delay))
        else:
            outcome = DeliveryStatus.FAILED
            values.update(next_attempt_at=None)
        values["status"] = outcome.value
        async with self.runtime.db.transaction() as session:
            ours = await repository.finish_attempt(
                session, delivery.id, self.owner, delivery.attempts, **values
            )
            if ours or await repository.delivery_exists(session, delivery.id):
                repository.add_attempt(
                    session,
                    WebhookAttempt(
                        delivery_id=delivery.id,
                        at=now,
                        status_code=result.status_code,
                        latency_ms=result.latency_ms,
                        error=values["last_error"],
                        response_body=result.response_body,
                        owner=self.owner,
                    ),
                )
            if ours:
                await self._update_endpoint(session, endpoint.id, result, gone)
        self.sent += 1
        if ours:
            observe_webhook_delivery(
                {"succeeded": "delivered", "pending": "failed"}.get(outcome.value, "gave_up"),
                (now - delivery.created_at).total_seconds(),
            )
        log.info(
            "webhook_attempt",
            delivery_id=delivery.id,
            endpoint_id=endpoint.id,
            webhook_event=delivery.event,
            attempt=delivery.attempts,
            status_code=result.status_code,
            latency_ms=result.latency_ms,
            error=result.error,
            outcome=outcome.value if ours else "lease_lost",
        )

    async def _update_endpoint(
        self, session: AsyncSession, endpoint_id: str, result: AttemptResult, gone: bool
    ) -> None:
        endpoint = await repository.find_endpoint(session, None, endpoint_id, lock=True)
        if endpoint is None:
            return
        now = utcnow()
        if result.succeeded:
            if endpoint.failing_since is not None:
                endpoint.failing_since = None
            return
        if gone:
            _disable(endpoint, "the endpoint answered 410 Gone")
            return
        if endpoint.failing_since is None:
            endpoint.failing_since = now
            return
        days = self.runtime.settings.webhooks.disable_after_failing_days
        if endpoint.enabled and now - endpoint.failing_since >= timedelta(days=days):
            _disable(endpoint, f"every delivery attempt failed for {days:g} days")


def _disable(endpoint: WebhookEndpoint, reason: str) -> None:
    if endpoint.enabled:
        set_enabled(endpoint, False, reason)
        log.warning("webhook_endpoint_disabled", endpoint_id=endpoint.id, reason=reason)


async def _read_start(response: httpx.Response, within_s: float) -> str:
    """The first 2 KiB of the body, read for at most `within_s`; the rest is dropped."""
    kept = bytearray()
    with contextlib.suppress(TimeoutError, httpx.HTTPError):
        async with asyncio.timeout(within_s):
            async for chunk in response.aiter_bytes():
                kept += chunk
                if len(kept) >= RESPONSE_KEPT_BYTES:
                    break
    return bytes(kept[:RESPONSE_KEPT_BYTES]).decode("utf-8", errors="replace")
