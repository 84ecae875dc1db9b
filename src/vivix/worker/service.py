"""Running one claimed generation to its end.

Routes are tried in catalog order (test keys: the local renderer only). On a route:
persist our intent (a request key, guarded by our lease) → submit (the adapter passes the
key where the provider takes one) → persist the upstream handle → poll until a result →
check the outputs are media → copy them into our storage → settle. A retried attempt
after a crash resumes the stored handle — before fetching reference images again — and
when only the intent was stored (the crash fell between the provider accepting the
submit and the handle being saved), asks the adapter to find the job by the key before
it submits again, with the same key. Retriable errors retry the same route with backoff,
then move to the next mirror, asking the abandoned upstream job to stop; rejected input
fails the generation; fatal (misconfigured) routes are skipped. The model's deadline
ends it with TIMEOUT. Every failure releases the hold.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from vivix.accounts.repository import find_account
from vivix.catalog import pricing
from vivix.catalog.schemas import RouteSpec
from vivix.generations.finish import FinalState, commit_final_state
from vivix.kit import tracing
from vivix.kit.clock import iso, parse_iso, utcnow
from vivix.kit.egress import FetchFailed, GuardedFetcher, UrlRefused
from vivix.kit.logging import redact
from vivix.kit.metrics import provider_call
from vivix.models import Generation, GenerationStatus
from vivix.providers.base import (
    ProviderAdapter,
    ProviderFatalError,
    ProviderRejectedError,
    ProviderRetriableError,
    ReferenceImage,
    RenderRequest,
    RenderResult,
    UpstreamHandle,
)
from vivix.providers.circuits import route_key
from vivix.providers.media import NotMedia, inspect_media, with_detected_facts
from vivix.providers.registry import LOCAL, ProviderRegistry
from vivix.storage.service import extension_for
from vivix.worker import repository

if TYPE_CHECKING:
    from vivix.runtime import Runtime

log = structlog.get_logger(__name__)

POLL_INTERVAL_S = (0.5, 5.0)
ACTIVE = frozenset(
    {GenerationStatus.PENDING.value, GenerationStatus.PROCESSING.value}
)  # first and longest wait between upstream status checks


class LeaseLost(Exception):
    """The generation is no longer ours (reaped, canceled or settled elsewhere)."""


# What customers read per failure code: stable text, no provider or internal detail (that
# goes to `last_error`, for operators).
PUBLIC_MESSAGES = {
    "PROVIDER_ERROR": "The provider could not complete this generation; nothing was charged.",
    "PROVIDER_REJECTED": "The provider refused the input of this generation; nothing was charged.",
    "CONTENT_REJECTED": (
        "The provider's content policy refused this generation; nothing was charged."
    ),
    "INTERNAL_ERROR": (
        "The generation could not be completed because of an error on our side; "
        "nothing was charged."
    ),
}
MAX_ATTEMPT_ERRORS = 20
INTENT_KEYS = frozenset({"request_key", "requested_at"})
MAX_ERROR_TEXT = 2000
PROGRESS_EVERY_S = 0.5  # at most this often a job's progress is written


@dataclass
class Failure:
    """How a generation ends when it fails: `code` and `message` for the customer (the
    code's stable message unless one is given), `detail` for operators."""

    code: str
    detail: str
    message: str | None = None

    @property
    def public_message(self) -> str:
        return self.message or PUBLIC_MESSAGES.get(self.code, PUBLIC_MESSAGES["INTERNAL_ERROR"])


def note_attempt_error(generation: Generation, worker: str, error: str) -> None:
    """Keep an attempt's error for operators (credentials redacted): appended to the
    attempt history and shown as `last_error`. The caller holds the row's lock."""
    text = redact(error)[:MAX_ERROR_TEXT]
    entry = {"attempt": generation.attempts, "at": iso(utcnow()), "worker": worker, "error": text}
    generation.attempt_errors = [*(generation.attempt_errors or []), entry][-MAX_ATTEMPT_ERRORS:]
    generation.last_error = text


class JobExecutor:
    def __init__(
        self, runtime: Runtime, registry: ProviderRegistry, owner: str, fetcher: GuardedFetcher
    ) -> None:
        self.runtime = runtime
        self.registry = registry
        self.owner = owner
        self.fetcher = fetcher

    def routes_for(self, generation: Generation) -> list[RouteSpec]:
        model = self.runtime.catalog.get(generation.model)
        if model is None:
            return []
        if generation.is_test:
            return [RouteSpec(provider=LOCAL, upstream_model=model.spec.category)]
        return model.spec.routes

    async def run(self, generation: Generation) -> None:
        model = self.runtime.catalog.get(generation.model)
        if model is None:
            await self.fail(
                generation, Failure("PROVIDER_ERROR", "the model is no longer in the catalog")
            )
            return
        started = generation.started_at or utcnow()
        remaining = (
            started + timedelta(seconds=model.spec.deadline_seconds) - utcnow()
        ).total_seconds()
        log.info("job_started", model=generation.model, attempt=generation.attempts)
        request = RenderRequest(
            generation_id=generation.id,
            model=generation.model,
            category=model.spec.category,
            upstream_model="",
            params=dict(generation.params),
        )
        outcome: RenderResult | Failure
        try:
            async with asyncio.timeout(max(remaining, 0.001)):
                try:
                    outcome = await self._run_routes(generation, request)
                except ReferenceRefused as refused:
                    outcome = refused.failure
        except TimeoutError:
            await self._cancel_upstream(generation)
            deadline = model.spec.deadline_seconds
            outcome = Failure(
                "TIMEOUT",
                f"the model's deadline of {deadline} s passed",
                f"The generation did not finish within {deadline} s; nothing was charged.",
            )
        if isinstance(outcome, Failure):
            await self.fail(generation, outcome)
        else:
            await self.complete(generation, outcome)

    async def _fetch_reference_images(self, request: RenderRequest) -> None:
        """Every reference image through the SSRF guard (redirects re-checked), so adapters
        get verified bytes; a refusal fails the generation before any provider is paid.
        Fetched once per attempt, and only when a submit (or a lookup) needs them: resuming
        a stored upstream job needs none."""
        urls = request.params.get("reference_images") or []
        if not urls or request.reference_images:
            return
        images = []
        for index, url in enumerate(urls):
            try:
                fetched = await self.fetcher.fetch(url)
            except (UrlRefused, FetchFailed) as exc:
                # The guard's reason is about the client's own URL: safe and useful to show.
                message = f"Reference image {index} could not be used: {exc.reason}"
                failure = Failure("INVALID_REFERENCE_IMAGE", f"{message} ({url[:200]})", message)
                raise ReferenceRefused(failure) from None
            images.append(ReferenceImage(url, fetched.data, fetched.content_type))
        request.reference_images = images

    async def _run_routes(
        self, generation: Generation, request: RenderRequest
    ) -> RenderResult | Failure:
        routes = self.routes_for(generation)
        start = generation.route_index or 0
        last_error = "no provider route is available"
        open_routes = await self.runtime.circuits.open_routes()
        for index in range(start, len(routes)):
            route = routes[index]
            adapter = self.registry.get(route.provider)
            circuit = route_key(route.provider, route.upstream_model)
            resuming = generation.route_index == index and generation.upstream_handle is not None
            if adapter is None or (circuit in open_routes and not resuming):
                continue
            request.upstream_model = route.upstream_model
            request.options = route.options
            resume = generation.upstream_handle if generation.route_index == index else None
            attempts = self.runtime.settings.worker.route_attempts
            for attempt in range(attempts):
                handle = resume
                try:
                    on = OnRoute(generation, index, route, adapter)
                    if handle is not None and is_intent_only(handle):
                        handle = await self._find(on, request, handle)
                    if handle is None:
                        handle = await self._submit(on, request)
                    result = await self._poll(generation, adapter, handle, request)
                except ProviderRetriableError as exc:
                    last_error = exc.message
                    # Keep polling the same upstream job unless it is gone: never pay twice.
                    resume = None if exc.resubmit else handle
                    if attempt + 1 < attempts:
                        backoff = self.runtime.settings.worker.route_retry_backoff_seconds
                        await asyncio.sleep(_backoff(attempt, exc.retry_after_s, backoff))
                        continue
                    await self._route_failed(circuit, route, exc.message)
                    if resume is not None:  # failing over: nobody will collect this job
                        await _cancel_quietly(generation.id, adapter, resume)
                except ProviderRejectedError as exc:
                    if exc.content:
                        return Failure("CONTENT_REJECTED", exc.message)
                    rejected = PUBLIC_MESSAGES["PROVIDER_REJECTED"]
                    return Failure("PROVIDER_ERROR", exc.message, rejected)
                except ProviderFatalError as exc:
                    last_error = exc.message
                    await self._route_failed(circuit, route, exc.message)
                    if handle is not None:
                        await _cancel_quietly(generation.id, adapter, handle)
                    break
                else:
                    await self.runtime.circuits.record_success(circuit)
                    return result
        return Failure("PROVIDER_ERROR", f"every provider route failed: {last_error}")

    async def _route_failed(self, circuit: str, route: RouteSpec, error: str) -> None:
        opened = await self.runtime.circuits.record_failure(circuit, error)
        log.warning("provider_route_failed", route=circuit, error=error, circuit_opened=opened)

    async def _find(
        self, on: OnRoute, request: RenderRequest, intent: UpstreamHandle
    ) -> UpstreamHandle | None:
        """Only an intent was stored: the job its key made, if the provider has one (then
        stored as the handle); None to submit again — with the same key."""
        request.request_key = str(intent["request_key"])
        request.requested_at = parse_iso(str(intent["requested_at"]))
        await self._fetch_reference_images(request)  # lookups rebuild the request body
        with _provider_call(on.route.provider, on.route.upstream_model, "find"):
            found = await on.adapter.find(request)
        if found is None:
            return None
        log.info("upstream_job_found", generation_id=on.generation.id, provider=on.route.provider)
        await self._store_handle(on, {**found, **intent})
        return found

    async def _submit(self, on: OnRoute, request: RenderRequest) -> UpstreamHandle:
        await self._fetch_reference_images(request)
        intent: UpstreamHandle = {}
        if on.route.provider != LOCAL:  # rendering locally again costs nothing upstream
            if not request.request_key:
                request.request_key = str(uuid.uuid4())
                request.requested_at = utcnow()
            assert request.requested_at is not None
            intent = {"request_key": request.request_key, "requested_at": iso(request.requested_at)}
            # Stored before the provider is called: a crash from here on finds the job by
            # its key instead of paying for another.
            if not await self._store(on, intent):
                raise LeaseLost()
        with _provider_call(on.route.provider, on.route.upstream_model, "submit"):
            handle = await on.adapter.submit(request)
        persisted = {**{k: v for k, v in handle.items() if k != "result"}, **intent}
        await self._store_handle(on, persisted)
        request.request_key, request.requested_at = "", None  # the next submit is another job
        return handle

    async def _store_handle(self, on: OnRoute, handle: UpstreamHandle) -> None:
        # Known at once: a deadline or a cancel arriving while it is being stored can still
        # stop this upstream job (`_cancel_upstream` reads it from the generation).
        on.generation.route_index = on.index
        on.generation.upstream_handle = handle
        # Stored before we wait on it: a crash from here on resumes this upstream job.
        if not await self._store(on, handle):
            # Not ours any more. Stop the job only if nobody will resume it: a retry finds
            # it by the stored intent and must not find it canceled.
            if await self.is_abandoned(on.generation.id):
                await _cancel_quietly(on.generation.id, on.adapter, handle)
            raise LeaseLost()

    async def _store(self, on: OnRoute, handle: UpstreamHandle) -> bool:
        async with self.runtime.db.transaction() as session:
            return await repository.update_if_leased(
                session,
                on.generation.id,
                self.owner,
                route_index=on.index,
                provider=on.route.provider,
                upstream_handle=handle,
            )

    async def _poll(
        self,
        generation: Generation,
        adapter: ProviderAdapter,
        handle: UpstreamHandle,
        request: RenderRequest,
    ) -> RenderResult:
        wait = POLL_INTERVAL_S[0]
        recorder = ProgressRecorder(self.runtime, generation.id, self.owner)
        request.on_progress = recorder.report
        while True:
            with _provider_call(adapter.name, request.upstream_model, "poll"):
                outcome = await adapter.poll(handle, request)
            if isinstance(outcome, RenderResult):
                return await _verified(outcome, request.category)
            if outcome.fraction is not None:
                await recorder.report(outcome.fraction)
            await asyncio.sleep(wait)
            wait = min(POLL_INTERVAL_S[1], wait * 1.5)

    async def is_abandoned(self, generation_id: str) -> bool:
        """True when no worker will resume this generation (canceled, or otherwise finished);
        False while it is queued or leased again, so its upstream job must be kept."""
        async with self.runtime.db.read() as session:
            current = await repository.find_generation(session, generation_id)
        return current is None or current.status not in ACTIVE

    async def _cancel_upstream(self, generation: Generation) -> None:
        routes = self.routes_for(generation)
        if generation.upstream_handle is None or generation.route_index is None:
            return
        if is_intent_only(generation.upstream_handle):
            return  # no job known to stop
        if generation.route_index >= len(routes):
            return
        adapter = self.registry.get(routes[generation.route_index].provider)
        if adapter is not None:
            try:
                await adapter.cancel(generation.upstream_handle)
            except Exception as exc:
                log.warning("upstream_cancel_failed", generation_id=generation.id, error=repr(exc))

    async def complete(self, generation: Generation, result: RenderResult) -> None:
        storage = self.runtime.storage
        stored: list[dict[str, Any]] = []
        keys: list[str] = []
        for index, output in enumerate(result.outputs):
            key = storage.new_key(generation.id, index, extension_for(output.content_type))
            await storage.put(key, output.data, output.content_type)
            keys.append(key)
            stored.append(
                {
                    # The URL is built when read, from the public URL configured then.
                    "key": key,
                    "content_type": output.content_type,
                    "bytes": len(output.data),
                    "width": output.width,
                    "height": output.height,
                    "duration_s": output.duration_s,
                }
            )
        charge = 0 if generation.is_test else await self._charge_for(generation, stored)
        final = (
            FinalState.completed(stored, charge)
            if stored
            else FinalState.failed("PROVIDER_ERROR", PUBLIC_MESSAGES["PROVIDER_ERROR"])
        )
        if await self._commit_final_state(generation, final) is None:
            for key in keys:  # lost the race (canceled/reaped): don't leave orphans behind
                await storage.delete(key)
            raise LeaseLost()
        tracing.annotate(status=final.status.value, error_code=final.error_code, credits=charge)
        log.info(
            "generation_ended",
            status=final.status.value,
            model=generation.model,
            outputs=len(stored),
            credits=charge,
        )

    async def _commit_final_state(
        self, generation: Generation, final: FinalState
    ) -> Generation | None:
        """End the generation if this worker still holds its lease; None if it does not."""

        async def lock_leased(session: AsyncSession) -> Generation | None:
            return await repository.lock_leased_generation(session, generation.id, self.owner)

        return await commit_final_state(self.runtime, lock_leased, final)

    async def _charge_for(self, generation: Generation, stored: list[dict[str, Any]]) -> int:
        model = self.runtime.catalog.get(generation.model)
        if model is None or not stored:
            return 0
        override = pricing.thawed(generation.price_snapshot)
        if generation.price_snapshot is None:  # admitted before prices were frozen
            async with self.runtime.db.read() as session:
                account = await find_account(session, generation.account_id)
            override = pricing.parse_override(
                account.price_overrides.get(generation.model) if account else None
            )
        sizes = [(o["width"], o["height"], o["duration_s"]) for o in stored]
        return pricing.final_charge(
            model.spec, generation.params, override, sizes, generation.credits_estimate
        )

    async def fail(self, generation: Generation, failure: Failure) -> None:
        async def lock_and_note(session: AsyncSession) -> Generation | None:
            locked = await repository.lock_leased_generation(session, generation.id, self.owner)
            if locked is not None:  # the detail is kept with the final state, for operators
                note_attempt_error(locked, self.owner, f"{failure.code}: {failure.detail}")
            return locked

        final = FinalState.failed(failure.code, failure.public_message)
        if await commit_final_state(self.runtime, lock_and_note, final) is None:
            raise LeaseLost()
        tracing.annotate(status=final.status.value, error_code=failure.code)
        log.info(
            "generation_failed",
            generation_id=generation.id,
            code=failure.code,
            reason=redact(failure.detail),
        )


class ProgressRecorder:
    """Stores one job's fraction done as it is reported (polls, the local renderer): only
    upward, at most every PROGRESS_EVERY_S (the last report before the result may be
    dropped; the final state sets 1.0). Best effort: a failed write is logged, never
    fails the job."""

    def __init__(self, runtime: Runtime, generation_id: str, owner: str) -> None:
        self.runtime = runtime
        self.generation_id = generation_id
        self.owner = owner
        self.stored = -1.0
        self.stored_at = float("-inf")

    async def report(self, fraction: float) -> None:
        if fraction != fraction:  # NaN from a provider says nothing
            return
        fraction = min(1.0, max(0.0, fraction))
        now = asyncio.get_running_loop().time()
        if fraction <= self.stored or now - self.stored_at < PROGRESS_EVERY_S:
            return
        self.stored, self.stored_at = fraction, now
        try:
            async with self.runtime.db.transaction() as session:
                await repository.record_progress(session, self.generation_id, self.owner, fraction)
        except Exception as exc:
            log.warning("progress_not_stored", generation_id=self.generation_id, error=repr(exc))


@dataclass(frozen=True, slots=True)
class OnRoute:
    """A generation on one of its routes: where a submit goes and its handle is stored."""

    generation: Generation
    index: int
    route: RouteSpec
    adapter: ProviderAdapter


class ReferenceRefused(Exception):
    """A reference image the guard refused or couldn't fetch: the generation fails."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.detail)
        self.failure = failure


def _provider_call(provider: str, route: str, operation: str) -> AbstractContextManager[None]:
    """One adapter call: timed and counted (metrics), and a CLIENT span when tracing."""
    if not tracing.enabled():
        return provider_call(provider, route, operation)
    return _traced_provider_call(provider, route, operation)


@contextmanager
def _traced_provider_call(provider: str, route: str, operation: str) -> Iterator[None]:
    attributes = {"vivix.provider": provider, "vivix.route": route}
    with (
        tracing.span(f"{provider} {operation}", kind="CLIENT", attributes=attributes),
        provider_call(provider, route, operation),
    ):
        yield


def is_intent_only(handle: UpstreamHandle) -> bool:
    """A stored handle that records only our request key: the submit's answer was lost."""
    return set(handle) <= INTENT_KEYS


async def _cancel_quietly(
    generation_id: str, adapter: ProviderAdapter, handle: UpstreamHandle
) -> None:
    """Best effort: ask the upstream to stop a job nobody will collect."""
    if is_intent_only(handle):
        return
    try:
        await adapter.cancel(handle)
    except Exception as exc:
        log.warning("upstream_cancel_failed", generation_id=generation_id, error=repr(exc))


async def _verified(result: RenderResult, category: str) -> RenderResult:
    """The result with every output checked to be media of the model's kind (by its
    bytes), typed by what it is. A file that isn't is a retriable provider error: the
    next poll of the same upstream job downloads it again; a route that keeps delivering
    junk fails over, then the generation fails and is refunded."""
    outputs = []
    for index, output in enumerate(result.outputs):
        try:
            facts = await asyncio.to_thread(inspect_media, output.data, category)
        except NotMedia as exc:
            raise ProviderRetriableError(
                f"output {index} is not a valid {category} file: {exc.reason}"
            ) from None
        outputs.append(with_detected_facts(output, facts))
    return RenderResult(outputs)


def _backoff(attempt: int, retry_after_s: float | None, base_s: float) -> float:
    if retry_after_s is not None:
        return min(max(retry_after_s, 0.0), 60.0)
    return min(30.0, base_s * 2.0**attempt) * (0.5 + random.random() / 2)
