"""Generation queries of the API (the worker's queue queries are in `vivix.worker.repository`).

Core statements on a connection: the read and submit paths run on every call, and loading
ORM entities there costs more than the database does. Rows carry the columns
`generation_out` shows, labelled with the model's attribute names (`metadata_`), plus
`queue_position` (1-based place among all pending generations, capped; None unless
pending)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Row,
    String,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import aliased

from vivix.accounts.repository import TAKE_SLOT_AND_HOLD, select_caller
from vivix.models import Account, Base, Generation, GenerationStatus, LedgerKind

QUEUE_POSITION_CAP = 1000
PENDING = GenerationStatus.PENDING.value

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
)
_SHOWN_COLUMNS = [attribute.label(attribute.key) for attribute in _SHOWN]


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
_INSERT = insert(Base.metadata.tables["generations"])
_INSERT_LEDGER_ENTRY = insert(Base.metadata.tables["ledger_entries"])
_EXPIRE_IDEMPOTENCY_KEY = (
    update(Generation)
    .where(
        Generation.account_id == bindparam("b_account_id"),
        Generation.is_test == bindparam("b_is_test"),
        Generation.idempotency_key == bindparam("b_idempotency_key"),
        Generation.created_at < bindparam("older_than"),
    )
    .values(idempotency_key=None)
)
# What a submit writes; the other columns start NULL (a JSON column given None would hold
# JSON `null` instead).
SUBMITTED_COLUMNS = (
    "id",
    "account_id",
    "api_key_id",
    "model",
    "status",
    "is_test",
    "params",
    "metadata",
    "credits_estimate",
    "price_snapshot",
    "idempotency_key",
    "request_hash",
    "created_at",
    "attempts",
    "run_after",
    "cancel_requested",
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


async def read_with_caller(
    connection: AsyncConnection, key_hash: str, generation_id: str | None
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


def _admission_statement() -> Any:
    """PostgreSQL: admission in one statement. The UPDATE takes a concurrency slot and the
    credits only if both are there; the generation row and the hold entry are inserted
    from its result, so a refusal inserts nothing. Run in autocommit it is one round trip
    and its own transaction, and the account row is locked only while it runs."""
    amount = bindparam("amount", type_=BigInteger)
    account = TAKE_SLOT_AND_HOLD.cte("account")
    generations = Base.metadata.tables["generations"]
    generation = _INSERT.from_select(
        list(SUBMITTED_COLUMNS),
        select(
            *(bindparam(f"g_{name}", type_=generations.c[name].type) for name in SUBMITTED_COLUMNS)
        ).select_from(account),
    ).cte("generation")
    ledger = Base.metadata.tables["ledger_entries"]
    hold = (
        insert(ledger)
        .from_select(
            ["account_id", "kind", "amount", "generation_id", "created_at"],
            select(
                bindparam("account_id", type_=String),
                literal(LedgerKind.HOLD.value, String),
                -amount,
                bindparam("g_id", type_=String),
                bindparam("g_created_at", type_=ledger.c.created_at.type),
            )
            .select_from(account)
            .where(amount > 0),
        )
        .cte("hold")
    )
    return select(account.c.balance).add_cte(generation, hold)


_ADMIT = _admission_statement()


def admit_on_sqlite(
    connection: Connection,
    columns: dict[str, Any],
    amount: int,
    concurrent_limit: int,
    idempotency_keys_before: datetime,
) -> int | None:
    """SQLite, inside `Database.run_sqlite_write`: the inserts, then the conditional
    UPDATE that takes the slot and the credits. None when it refused; the caller then
    rolls the transaction back (raises)."""
    if columns["idempotency_key"] is not None:
        connection.execute(
            _EXPIRE_IDEMPOTENCY_KEY,
            {
                "b_account_id": columns["account_id"],
                "b_is_test": columns["is_test"],
                "b_idempotency_key": columns["idempotency_key"],
                "older_than": idempotency_keys_before,
            },
        )
    connection.execute(_INSERT, columns)
    if amount:
        connection.execute(
            _INSERT_LEDGER_ENTRY,
            {
                "account_id": columns["account_id"],
                "kind": LedgerKind.HOLD.value,
                "amount": -amount,
                "generation_id": columns["id"],
                "created_at": columns["created_at"],
            },
        )
    balance = connection.execute(
        TAKE_SLOT_AND_HOLD,
        {
            "account_id": columns["account_id"],
            "amount": amount,
            "concurrent_limit": concurrent_limit,
        },
    ).scalar_one_or_none()
    return None if balance is None else int(balance)


async def admit_in_one_statement(
    connection: AsyncConnection, columns: dict[str, Any], amount: int, concurrent_limit: int
) -> int | None:
    """PostgreSQL only, on an autocommit connection (see `_admission_statement`). The
    balance after the hold, or None when the slot or the credits were not there."""
    values = {f"g_{name}": columns[name] for name in SUBMITTED_COLUMNS}
    values.update(
        account_id=columns["account_id"], amount=amount, concurrent_limit=concurrent_limit
    )
    balance = (await connection.execute(_ADMIT, values)).scalar_one_or_none()
    return None if balance is None else int(balance)


async def expire_idempotency_key(
    connection: AsyncConnection, account_id: str, is_test: bool, key: str, older_than: datetime
) -> None:
    """Free a key whose 24 h replay window has passed so it can be used again."""
    await connection.execute(
        _EXPIRE_IDEMPOTENCY_KEY,
        {
            "b_account_id": account_id,
            "b_is_test": is_test,
            "b_idempotency_key": key,
            "older_than": older_than,
        },
    )


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
) -> list[Row[Any]]:
    query = select(*_SHOWN_COLUMNS).where(Generation.account_id == account_id)
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
