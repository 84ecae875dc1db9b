"""Submitting and reading generations.

Admission (API.md §2 order after the caller gate): params validation (model existence
first) → allowlist → provider availability → concurrency → credits. The last two, the
generation row and the hold happen in one transaction under the account row lock, so a
rejected submit leaves no trace and replicas cannot race past a limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from vivix.accounts.service import Caller
from vivix.billing.ledger import Admission
from vivix.catalog import pricing
from vivix.catalog.availability import availability_of
from vivix.catalog.params import validate_metadata, validate_params
from vivix.catalog.service import CatalogModel
from vivix.generations import repository
from vivix.generations.eta import RECENT_RUNS, Run
from vivix.generations.finish import FinalState, commit_final_state
from vivix.kit import tracing
from vivix.kit.bounds import MAX_BALANCE
from vivix.kit.clock import utcnow
from vivix.kit.egress import UrlRefused, check_url
from vivix.kit.errors import (
    ConcurrencyLimited,
    GenerationNotFound,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidParams,
    ModelNotAllowed,
    ModelNotFound,
    NotCancelable,
    ProviderDown,
)
from vivix.kit.ids import uuid7
from vivix.kit.logging import bind_generation, current_request_id
from vivix.models import ACTIVE_STATUSES, Generation, NewGeneration

if TYPE_CHECKING:
    from vivix.runtime import Runtime

IDEMPOTENCY_KEY_MAX = 255
SEED_MAX = 2**32 - 1


@dataclass(frozen=True, slots=True)
class Submitted:
    generation_id: str
    balance: int
    # The new generation's row, or (a repeated Idempotency-Key) the original.
    created: NewGeneration | None = None
    replay: Row[Any] | None = None


ADMISSION_ATTEMPTS = 3


def request_fingerprint(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def resolve_model(runtime: Runtime, body: dict[str, Any]) -> CatalogModel:
    slug = body.get("model")
    if slug is None:
        raise InvalidParams("model", "is required")
    if not isinstance(slug, str):
        raise InvalidParams("model", "must be a string (a model slug)")
    model = runtime.catalog.get(slug)
    if model is None:
        raise ModelNotFound(f"There is no model called {slug[:100]!r}.", model=slug[:100])
    return model


def check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not key or len(key) > IDEMPOTENCY_KEY_MAX or not key.isprintable():
        raise InvalidParams(
            "Idempotency-Key", f"must be 1 to {IDEMPOTENCY_KEY_MAX} printable characters"
        )
    return key


async def check_reference_images(runtime: Runtime, params: dict[str, Any]) -> None:
    """Refuse at submit any reference image URL whose host resolves to a non-public
    address; the worker checks again (and on every redirect) when it fetches."""
    settings = runtime.settings.fetch
    for index, url in enumerate(params.get("reference_images") or []):
        try:
            async with asyncio.timeout(settings.resolve_timeout_seconds):
                await check_url(
                    url,
                    runtime.resolver,
                    allow_private_hosts=frozenset(settings.allow_private_hosts),
                )
        except UrlRefused as exc:
            raise InvalidParams("reference_images", f"item {index} {exc.reason}") from None
        except TimeoutError:
            raise InvalidParams(
                "reference_images", f"item {index}: its host name did not resolve in time"
            ) from None


async def ensure_routable(runtime: Runtime, model: CatalogModel, caller: Caller) -> None:
    """At least one route is configured and its circuit closed, else 503 before any hold:
    `not_configured` without Retry-After (retrying cannot help), `circuit_open` with it."""
    if caller.is_test:
        return  # test keys render every model on the local renderer
    state = availability_of(model, runtime.settings, await runtime.circuits.open_routes())
    if state.available:
        return
    if state.reason == "not_configured":
        raise ProviderDown(
            f"No provider route for {model.slug} is configured on this server.",
            next="Retrying cannot help: ask the operator to configure one of the model's "
            "providers, or pick a model listed as available in GET /api/v1/models.",
            reason="not_configured",
        )
    raise ProviderDown(
        f"Every provider route for {model.slug} is failing; they are paused for now.",
        headers={"Retry-After": str(state.retry_after_s)},
        reason="circuit_open",
    )


async def submit(
    runtime: Runtime, caller: Caller, body: dict[str, Any], idempotency_key: str | None
) -> Submitted:
    account = caller.account
    idempotency_key = check_idempotency_key(idempotency_key)
    fingerprint = request_fingerprint(body) if idempotency_key else None
    if idempotency_key is not None:
        # The original first: checks whose answer changes over time (the catalog, the
        # allowlist, DNS of reference images, circuits) must not refuse its replay.
        replay = await _find_replay(runtime, caller, idempotency_key, fingerprint)
        if replay is not None:
            return Submitted(replay.id, account.balance, replay=replay)

    model = resolve_model(runtime, body)
    params = validate_params(model.spec, body)
    metadata = validate_metadata(body.get("metadata"))
    await check_reference_images(runtime, params)
    if model.slug not in account.allowed_models:
        raise ModelNotAllowed(model=model.slug)
    await ensure_routable(runtime, model, caller)

    if "seed" in model.spec.params and "seed" not in params:
        params["seed"] = secrets.randbelow(SEED_MAX + 1)  # recorded so the result can be redone
    override = pricing.parse_override(account.price_overrides.get(model.slug))
    estimate = 0 if caller.is_test else pricing.estimate(model.spec, params, override)
    if estimate > MAX_BALANCE:  # more than any wallet can hold: never affordable
        raise InsufficientCredits(
            f"This generation needs {estimate} credits; {account.balance} are available.",
            balance=account.balance,
            needed=estimate,
        )

    now = utcnow()
    generation_id = uuid7()
    bind_generation(generation_id)
    tracing.annotate(generation_id=generation_id, account_id=account.id, model=model.slug)
    generation = NewGeneration(
        id=generation_id,
        request_id=current_request_id(),
        traceparent=tracing.current_traceparent(),
        account_id=account.id,
        api_key_id=caller.key_id,
        model=model.slug,
        is_test=caller.is_test,
        params=params,
        metadata=metadata,
        credits_estimate=estimate,
        price_snapshot=pricing.freeze(model.spec, override),
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
        created_at=now,
        run_after=now,
        source=caller.source,
        user_id=caller.user_id,
    )
    admitted = await _admit(runtime, caller, generation)
    if isinstance(admitted, Row):
        return Submitted(admitted.id, account.balance, replay=admitted)
    await runtime.notify_enqueued()
    return Submitted(generation.id, admitted, created=generation)


async def _admit(runtime: Runtime, caller: Caller, generation: NewGeneration) -> int | Row[Any]:
    """The generation row, its hold and a concurrency slot: all or nothing (the ledger's
    `hold`). Returns the balance after the hold or, when another request used the same
    Idempotency-Key first, the original generation; raises the documented error when a
    limit refuses."""
    account_id = caller.account.id
    limit = caller.limits.concurrent_jobs
    key = generation.idempotency_key
    admission = Admission(generation, limit, generation.created_at - _replay_window(runtime))
    for _ in range(ADMISSION_ATTEMPTS):
        try:
            balance = await runtime.ledger.hold(admission)
        except IntegrityError:
            # The (account, Idempotency-Key) unique index: a duplicate committed first.
            if key is None:
                raise
            replay = await _find_replay(runtime, caller, key, generation.request_hash)
            if replay is None:
                raise
            return replay
        if balance is not None:
            return balance
        if key is not None:
            # A duplicate may have taken the last slot or credits: it is the answer.
            replay = await _find_replay(runtime, caller, key, generation.request_hash)
            if replay is not None:
                return replay
        active, available = await runtime.ledger.available(account_id)
        refusal = _refusal(active, available, limit, generation.credits_estimate)
        if refusal is not None:
            raise refusal
        # Neither limit binds any more (jobs settled meanwhile): try again.
    raise ConcurrencyLimited(
        "The account's limits changed while this request was admitted; retry.", limit=limit
    )


def _replay_window(runtime: Runtime) -> timedelta:
    """How long an Idempotency-Key replays its generation; after it, the key is free."""
    return timedelta(hours=runtime.settings.idempotency_window_hours)


def _refusal(active: int, balance: int, limit: int, estimate: int) -> Exception | None:
    """Which limit refused, in the documented order (concurrency, then credits)."""
    if active >= limit:
        return ConcurrencyLimited(
            f"{active} generations are in flight; the limit is {limit}.", limit=limit
        )
    if balance < estimate:
        return InsufficientCredits(
            f"This generation needs {estimate} credits; {balance} are available.",
            balance=balance,
            needed=estimate,
        )
    return None


async def _find_replay(
    runtime: Runtime, caller: Caller, key: str, fingerprint: str | None
) -> Row[Any] | None:
    """The generation this key made in the caller's account and key mode, if it is still
    in its replay window; 409 when the body differs."""
    async with runtime.db.autocommit() as connection:
        existing = await repository.find_by_idempotency_key(
            connection, caller.account.id, caller.is_test, key
        )
    if existing is None:
        return None
    if existing.created_at < utcnow() - _replay_window(runtime):
        return None  # expired: this key may start a new generation
    if existing.request_hash != fingerprint:
        raise IdempotencyConflict()
    return existing


async def cancel(runtime: Runtime, account_id: str, generation_id: str) -> Generation:
    """Pending or processing → canceled with a full refund, at once. A processing job's
    worker is told (in-process signal / NOTIFY / its next heartbeat) and stops the render
    and the upstream job; its own settlement then finds the job no longer leased."""

    async def lock_cancelable(session: AsyncSession) -> Generation:
        generation = await repository.lock_generation(session, generation_id)
        if generation is None or generation.account_id != account_id:
            raise GenerationNotFound()
        if generation.status not in ACTIVE_STATUSES:
            raise NotCancelable(
                f"This generation is already {generation.status}.", status=generation.status
            )
        return generation

    canceled = await commit_final_state(runtime, lock_cancelable, FinalState.canceled())
    assert canceled is not None  # lock_cancelable raises rather than declining
    return canceled


async def wait_until_settled(
    runtime: Runtime, account_id: str, generation_id: str, seconds: float
) -> Row[Any] | None:
    """`Prefer: wait=N`: the generation once it is finished or after N seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    delay = 0.05
    while True:
        async with runtime.db.autocommit() as connection:
            generation = await repository.read_for_account(connection, account_id, generation_id)
        if generation is None or generation.status not in ACTIVE_STATUSES:
            return generation
        left = deadline - loop.time()
        if left <= 0:
            return generation
        await asyncio.sleep(min(delay, left))
        delay = min(0.5, delay * 1.5)


async def eta_ms(runtime: Runtime, row: Row[Any]) -> int | None:
    """`eta_ms` of a pending or processing generation from this process's run-time
    history (`generations.eta`, refreshed when stale); None for others or without
    history."""
    if row.status not in ACTIVE_STATUSES:
        return None

    async def load() -> tuple[list[Run], int]:
        async with runtime.db.autocommit() as connection:
            return await repository.recent_runs(connection, RECENT_RUNS)

    history = await runtime.run_times.current(load)
    return history.eta_ms(row, utcnow())
