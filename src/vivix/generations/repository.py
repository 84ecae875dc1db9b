"""Generation queries of the API (the worker's queue queries are in `vivix.worker.repository`;
a submit's row is inserted by admission, `vivix.billing.ledger`).

Core statements on a connection: the read and submit paths run on every call, and loading
ORM entities there costs more than the database does. Rows carry the columns
`generation_out` shows, labelled with the model's attribute names (`metadata_`), plus
`queue_position` (1-based place among all pending generations, capped; None unless
pending)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, bindparam, case, exists, func, null, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import aliased

from vivix.accounts.repository import select_caller
from vivix.events.repository import last_for_generation
from vivix.generations.eta import Run
from vivix.kit.db import ReadConnection
from vivix.models import Account, Generation, GenerationStatus

QUEUE_POSITION_CAP = 1000
PENDING = GenerationStatus.PENDING.value
PROCESSING = GenerationStatus.PROCESSING.value
COMPLETED = GenerationStatus.COMPLETED.value
ACTIVE = (PENDING, GenerationStatus.PROCESSING.value)

_SHOWN = (
    Generation.id,
    Generation.status,
    Generation.model,
    Generation.credits_estimate,
    Generation.credits_used,
    Generation.created_at,
    Generation.completed_at,
    Generation.progress,
    Generation.outputs,
    Generation.error_code,
    Generation.error_message,
    Generation.params,
    Generation.metadata_,
    Generation.source,
    Generation.expired_at,
    Generation.started_at,  # for `eta_ms` (generations.eta), with `generation_is_test`
)
_SHOWN_COLUMNS = [attribute.label(attribute.key) for attribute in _SHOWN] + [
    Generation.is_test.label("generation_is_test")  # the caller's row has the key's `is_test`
]


def _queue_position(generation_id: Any) -> Any:
    """Pending generations up to this one, counted only for a pending row."""
    ahead = (
        select(Generation.id)
        .where(Generation.status == PENDING, Generation.id <= generation_id)
        .limit(QUEUE_POSITION_CAP)
        .subquery()
    )
    count = select(func.count()).select_from(ahead).scalar_subquery()
    return case((Generation.status == PENDING, count), else_=None).label("queue_position")


_READ = select(*_SHOWN_COLUMNS, _queue_position(bindparam("generation_id"))).where(
    Generation.id == bindparam("generation_id"), Generation.account_id == bindparam("account_id")
)
# As `_READ`, with the generation's newest event id read in the same snapshot.
_READ_WITH_LAST_EVENT = _READ.add_columns(last_for_generation(Generation.id))
_READ_WITH_CALLER = select_caller(
    *_SHOWN_COLUMNS, _queue_position(bindparam("generation_id"))
).outerjoin(
    Generation,
    and_(Generation.id == bindparam("generation_id"), Generation.account_id == Account.id),
)
_KEYED = aliased(Generation)  # its own alias: the position subquery must not correlate
_BY_IDEMPOTENCY_KEY = select(
    *_SHOWN_COLUMNS,
    _queue_position(
        select(_KEYED.id)
        .where(
            _KEYED.account_id == bindparam("account_id"),
            _KEYED.is_test == bindparam("is_test"),
            _KEYED.idempotency_key == bindparam("idempotency_key"),
        )
        .scalar_subquery()
    ),
    Generation.request_hash,
).where(
    Generation.account_id == bindparam("account_id"),
    Generation.is_test == bindparam("is_test"),
    Generation.idempotency_key == bindparam("idempotency_key"),
)


async def get_generation(session: AsyncSession, generation_id: str) -> Generation | None:
    """Any account's generation, whole: for operators."""
    return await session.get(Generation, generation_id)


async def read_for_account(
    connection: AsyncConnection, account_id: str, generation_id: str
) -> Row[Any] | None:
    """The generation with its queue position, if it belongs to the account."""
    return (
        await connection.execute(_READ, {"generation_id": generation_id, "account_id": account_id})
    ).first()


async def read_with_last_event(
    connection: AsyncConnection, account_id: str, generation_id: str
) -> Row[Any] | None:
    """As `read_for_account`, plus `last_event_id`: the newest change-feed id of the state
    read (0 if none), where an event stream goes on from."""
    return (
        await connection.execute(
            _READ_WITH_LAST_EVENT, {"generation_id": generation_id, "account_id": account_id}
        )
    ).first()


async def active_with_last_event(
    connection: AsyncConnection, account_id: str, model: str | None, limit: int
) -> list[Row[Any]]:
    """The account's pending and processing generations (oldest first), as
    `read_with_last_event` shows them but without queue positions: where an account's
    event stream starts."""
    query = (
        select(
            *_SHOWN_COLUMNS,
            null().label("queue_position"),
            last_for_generation(Generation.id),
        )
        .where(Generation.account_id == account_id, Generation.status.in_(ACTIVE))
        .order_by(Generation.id)
        .limit(limit)
    )
    if model is not None:
        query = query.where(Generation.model == model)
    return list((await connection.execute(query)).all())


async def read_with_caller(
    connection: ReadConnection, key_hash: str, generation_id: str | None
) -> Row[Any] | None:
    """The status read, the call clients poll, in one statement: the caller's row
    (`accounts.repository.select_caller`) with the generation's columns, which are NULL
    (`id` None) unless the generation exists and is that account's."""
    return (
        await connection.execute(
            _READ_WITH_CALLER, {"key_hash": key_hash, "generation_id": generation_id}
        )
    ).first()


async def find_by_idempotency_key(
    connection: AsyncConnection, account_id: str, is_test: bool, key: str
) -> Row[Any] | None:
    """As `read_for_account`, plus `request_hash` and `created_at` for the replay checks.
    Keys are scoped to the account and the key mode (live or test)."""
    return (
        await connection.execute(
            _BY_IDEMPOTENCY_KEY,
            {"account_id": account_id, "is_test": is_test, "idempotency_key": key},
        )
    ).first()


async def lock_generation(session: AsyncSession, generation_id: str) -> Generation | None:
    """The generation row, locked until the transaction ends (API cancel)."""
    return (
        await session.execute(
            select(Generation)
            .where(Generation.id == generation_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()


def _metadata_matches(dialect: str, key: str, value: str) -> Any:
    if dialect == "postgresql":
        # Key and value are bound parameters of `->>`: any characters are literal.
        return Generation.metadata_[key].as_string() == value
    # SQLite's JSON paths have no escape for `"` or `\\` in a key; json_each compares the
    # key as a plain value instead.
    entries = func.json_each(Generation.metadata_).table_valued("key", "value")
    return exists(
        select(1).select_from(entries).where(and_(entries.c.key == key, entries.c.value == value))
    )


async def list_for_account(
    connection: AsyncConnection,
    account_id: str,
    *,
    limit: int,
    before_id: str | None,
    status: str | None,
    model: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    metadata: dict[str, str],
    source: str | None = None,
    models: list[str] | None = None,
) -> list[Row[Any]]:
    """Newest first. `models` keeps those models only (the Studio's category filter)."""
    query = select(*_SHOWN_COLUMNS).where(Generation.account_id == account_id)
    if source is not None:
        query = query.where(Generation.source == source)
    if models is not None:
        query = query.where(Generation.model.in_(models))
    if before_id is not None:
        query = query.where(Generation.id < before_id)
    if status is not None:
        query = query.where(Generation.status == status)
    if model is not None:
        query = query.where(Generation.model == model)
    if created_after is not None:
        query = query.where(Generation.created_at > created_after)
    if created_before is not None:
        query = query.where(Generation.created_at < created_before)
    for key, value in metadata.items():
        query = query.where(_metadata_matches(connection.dialect.name, key, value))
    query = query.order_by(Generation.id.desc()).limit(limit)
    return list((await connection.execute(query)).all())


async def recent_failures(connection: AsyncConnection, limit: int) -> list[Row[Any]]:
    """The latest failed generations of every account, with the account's name."""
    query: Any = (
        select(
            Generation.id,
            Generation.model,
            Generation.error_code,
            Generation.error_message,
            Generation.provider,
            Generation.attempts,
            Generation.completed_at,
            Account.name.label("account_name"),
        )
        .join(Account, Account.id == Generation.account_id)
        .where(Generation.status == GenerationStatus.FAILED.value)
        .order_by(Generation.completed_at.desc())
        .limit(limit)
    )
    return list((await connection.execute(query)).all())


async def queue_by_model(connection: AsyncConnection) -> list[Row[Any]]:
    """Per model: pending and processing counts and the oldest pending submit time."""
    pending = Generation.status == PENDING
    return list(
        (
            await connection.execute(
                select(
                    Generation.model,
                    func.sum(case((pending, 1), else_=0)).label("pending"),
                    func.sum(case((pending, 0), else_=1)).label("processing"),
                    func.min(case((pending, Generation.created_at), else_=None)).label(
                        "oldest_pending"
                    ),
                )
                .where(Generation.status.in_(ACTIVE))
                .group_by(Generation.model)
                .order_by(Generation.model)
            )
        ).all()
    )


async def active_generations(connection: AsyncConnection, limit: int) -> list[Row[Any]]:
    """The oldest running or queued generations of every account (the head of the queue)."""
    query: Any = (
        select(
            Generation.id,
            Generation.model,
            Generation.status,
            Generation.source,
            Generation.created_at,
            Generation.started_at,
            Generation.attempts,
            Generation.provider,
            Generation.progress,
            Account.name.label("account_name"),
        )
        .join(Account, Account.id == Generation.account_id)
        .where(Generation.status.in_(ACTIVE))
        .order_by(Generation.id)
        .limit(limit)
    )
    return list((await connection.execute(query)).all())


async def recent_runs(connection: AsyncConnection, limit: int) -> tuple[list[Run], int]:
    """The newest `limit` completed generations' run facts, newest first (by id: the
    (status, id) index serves it), and how many generations are processing now."""
    rows = await connection.execute(
        select(
            Generation.model,
            Generation.is_test,
            Generation.params,
            Generation.started_at,
            Generation.completed_at,
        )
        .where(Generation.status == COMPLETED)
        .order_by(Generation.id.desc())
        .limit(limit)
    )
    runs = [
        Run(row.model, row.is_test, row.params or {}, row.started_at, row.completed_at)
        for row in rows
        if row.started_at is not None and row.completed_at is not None
    ]
    processing = await connection.scalar(
        select(func.count()).select_from(Generation).where(Generation.status == PROCESSING)
    )
    return runs, int(processing or 0)
