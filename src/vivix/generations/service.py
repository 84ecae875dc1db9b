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
import math
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row
from sqlalchemy.exc import IntegrityError

from vivix.accounts import repository as accounts_repository
from vivix.accounts.endpoints import Caller
from vivix.catalog import pricing
from vivix.catalog.params import validate_metadata, validate_params
from vivix.catalog.service import CatalogModel
from vivix.generations import repository
from vivix.generations.settlement import finalize
from vivix.kit.bounds import MAX_BALANCE
from vivix.kit.clock import utcnow
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
from vivix.kit.runtime import Runtime
from vivix.models import ACTIVE_STATUSES, Generation, GenerationStatus
from vivix.providers.circuits import route_key
from vivix.providers.guarded_fetch import UrlRefused, check_url
from vivix.providers.registry import LOCAL, is_configured
from vivix.worker import repository as queue_repository
from vivix.worker.wakeup import notify_canceled

IDEMPOTENCY_KEY_MAX = 255
SEED_MAX = 2**32 - 1


@dataclass(frozen=True, slots=True)
class Submitted:
    generation_id: str
    balance: int
    # The new generation's column values, or (a repeated Idempotency-Key) the original.
    created: dict[str, Any] | None = None
    replay: Row[Any] | None = None


class _Refused(Exception):
    """Raised inside a write transaction to roll it back."""


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
    """At least one route is configured and its circuit closed, else 503 before any hold."""
    if caller.is_test:
        return  # test keys render every model on the local renderer
    open_routes = await runtime.circuits.open_routes()
    reopens: list[float] = []
    now = utcnow()
    for route in model.spec.routes:
        if route.provider != LOCAL and not is_configured(route.provider, runtime.settings):
            continue
        until = open_routes.get(route_key(route.provider, route.upstream_model))
        if until is None:
            return
        reopens.append((until - now).total_seconds())
    retry_after = (
        max(1, math.ceil(min(reopens))) if reopens else runtime.settings.provider_down_retry_after_s
    )
    raise ProviderDown(
        f"No provider route for {model.slug} is available right now.",
        headers={"Retry-After": str(retry_after)},
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
    columns: dict[str, Any] = {  # repository.SUBMITTED_COLUMNS
        "id": uuid7(),
        "account_id": account.id,
        "api_key_id": caller.key_id,
        "model": model.slug,
        "status": GenerationStatus.PENDING.value,
        "is_test": caller.is_test,
        "params": params,
        "metadata": metadata,
        "credits_estimate": estimate,
        "price_snapshot": pricing.freeze(model.spec, override),
        "idempotency_key": idempotency_key,
        "request_hash": fingerprint,
        "created_at": now,
        "attempts": 0,
        "run_after": now,
        "cancel_requested": False,
    }
    admitted = await _admit(runtime, caller, columns, estimate)
    if isinstance(admitted, Row):
        return Submitted(admitted.id, account.balance, replay=admitted)
    await runtime.notify_enqueued()
    return Submitted(columns["id"], admitted, created=columns)


async def _admit(
    runtime: Runtime, caller: Caller, columns: dict[str, Any], estimate: int
) -> int | Row[Any]:
    """The generation row, its hold and a concurrency slot: all or nothing. Returns the
    balance after the hold or, when another request used the same Idempotency-Key first,
    the original generation; raises the documented error when a limit refuses."""
    account_id = caller.account.id
    limit = caller.limits.concurrent_jobs
    key = columns["idempotency_key"]
    admit = _admit_on_sqlite if runtime.db.is_sqlite else _admit_on_postgres
    keys_before = columns["created_at"] - _replay_window(runtime)
    for _ in range(ADMISSION_ATTEMPTS):
        try:
            balance = await admit(runtime, columns, estimate, limit, keys_before)
        except IntegrityError:
            # The (account, Idempotency-Key) unique index: a duplicate committed first.
            if key is None:
                raise
            replay = await _find_replay(runtime, caller, key, columns["request_hash"])
            if replay is None:
                raise
            return replay
        if balance is not None:
            return balance
        if key is not None:
            # A duplicate may have taken the last slot or credits: it is the answer.
            replay = await _find_replay(runtime, caller, key, columns["request_hash"])
            if replay is not None:
                return replay
        async with runtime.db.autocommit() as connection:
            active, available = await accounts_repository.get_slots_and_balance(
                connection, account_id
            )
        refusal = _refusal(active, available, limit, estimate)
        if refusal is not None:
            raise refusal
        # Neither limit binds any more (jobs settled meanwhile): try again.
    raise ConcurrencyLimited(
        "The account's limits changed while this request was admitted; retry.", limit=limit
    )


async def _admit_on_sqlite(
    runtime: Runtime, columns: dict[str, Any], estimate: int, limit: int, keys_before: datetime
) -> int | None:
    """One short write transaction in one hand-off to the writer thread
    (`repository.admit_on_sqlite`), rolled back when a limit refuses."""

    def admit(connection: Connection) -> int:
        balance = repository.admit_on_sqlite(connection, columns, estimate, limit, keys_before)
        if balance is None:
            raise _Refused()
        return balance

    try:
        return await runtime.db.run_sqlite_write(admit)
    except _Refused:
        return None


async def _admit_on_postgres(
    runtime: Runtime, columns: dict[str, Any], estimate: int, limit: int, keys_before: datetime
) -> int | None:
    """One statement in autocommit (`repository.admit_in_one_statement`): one round trip,
    and the account row is locked only while it runs."""
    async with runtime.db.autocommit() as connection:
        if columns["idempotency_key"] is not None:
            await repository.expire_idempotency_key(
                connection,
                columns["account_id"],
                columns["is_test"],
                columns["idempotency_key"],
                keys_before,
            )
        return await repository.admit_in_one_statement(connection, columns, estimate, limit)


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
    async with runtime.db.transaction() as session:
        generation = await queue_repository.lock_generation(session, generation_id)
        if generation is None or generation.account_id != account_id:
            raise GenerationNotFound()
        if generation.status not in ACTIVE_STATUSES:
            raise NotCancelable(
                f"This generation is already {generation.status}.", status=generation.status
            )
        was_processing = generation.status == GenerationStatus.PROCESSING
        generation.cancel_requested = True
        await finalize(session, generation, GenerationStatus.CANCELED)
        if was_processing:
            await notify_canceled(session, generation.id)
    if was_processing:
        runtime.notify_canceled(generation.id)
    return generation


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
