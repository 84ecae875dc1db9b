"""The credit ledger: the one component that moves credits and concurrency slots.

Every movement is an append-only `ledger_entries` row written in the same transaction as
the account's cached totals (`balance`, `held`, `active_jobs`, the cycle counters) and as
the state change that causes it. The operations:

- `hold`: admission. Takes a concurrency slot and the estimate's credits only if both are
  there, and inserts the generation row it holds for with its hold entry: all or nothing
  (a refusal leaves no trace). Admissions are committed in batches (group commit): the
  holds waiting while one batch commits go together in the next transaction, each
  checked in arrival order against its own account's balance and slots as the ones
  before it left them, so a batch admits exactly what one-by-one admission would.
- `settle` / `release`: a generation's end. Gives the slot back, releases the whole hold
  and captures the charge (`release`: nothing captured).
- `grant`, `adjust`, `grant_cycle`, `roll_cycles`: operator credits and billing cycles.

Nothing else writes ledger rows or those account columns. The SQL differs by dialect
(PostgreSQL: one statement with data-modifying CTEs, one round trip, the account row
locked only while it runs; SQLite: a few statements inside the serialized write
transaction), so each operation has its SQLite and PostgreSQL forms side by side in
`SqliteLedger` and `PostgresLedger`. `open_ledger` picks one where the database is opened.

Lock order everywhere is generation row → account row, so settlements cannot deadlock
with each other or with admission (which locks only accounts, in id order).
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

from sqlalchemy import (
    BigInteger,
    Connection,
    String,
    Table,
    bindparam,
    func,
    insert,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import TextClause

from vivix.events.feed import EVENTS, event_row
from vivix.events.feed import GENERATION as GENERATION_EVENT
from vivix.kit.bounds import MAX_BALANCE, MAX_CREDIT_AMOUNT
from vivix.kit.clock import add_months, utcnow
from vivix.kit.db import Database, mark_events_written
from vivix.kit.errors import AdminInvalid
from vivix.kit.metrics import count_credits, credits_on_commit, observe_admission
from vivix.models import NEW_GENERATION_COLUMNS, Base, LedgerKind, NewGeneration

# Core tables, not ORM entities: these statements must not touch any session's identity map.
_ACCOUNTS = Base.metadata.tables["accounts"]
_LEDGER = Base.metadata.tables["ledger_entries"]
_GENERATIONS = Base.metadata.tables["generations"]


@dataclass(frozen=True, slots=True)
class Admission:
    """One submit asking to be admitted: its generation row holds
    `generation.credits_estimate` credits and one of the account's `concurrent_limit` slots."""

    generation: NewGeneration
    concurrent_limit: int
    # An earlier generation of the account with the same Idempotency-Key, created before
    # this moment, gives the key up (its replay window has passed).
    idempotency_keys_before: datetime

    @property
    def amount(self) -> int:
        return self.generation.credits_estimate


@dataclass(frozen=True, slots=True)
class Movement:
    """What one operation changes on one account: the entries that record it and the
    deltas of the account's cached totals (the balance moves by the entries' sum)."""

    account_id: str
    entries: tuple[tuple[LedgerKind, int], ...] = ()
    held: int = 0
    active_jobs: int = 0
    spent: int = 0
    granted: int = 0
    generation_id: str | None = None
    cycle_started_at: datetime | None = None
    reason: str | None = None

    def params(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "d_balance": sum(amount for _, amount in self.entries),
            "d_held": self.held,
            "d_active_jobs": self.active_jobs,
            "d_spent": self.spent,
            "d_granted": self.granted,
        }

    def entry_rows(self, now: datetime) -> list[dict[str, Any]]:
        return [
            {
                "account_id": self.account_id,
                "kind": kind.value,
                "amount": amount,
                "generation_id": self.generation_id,
                "cycle_started_at": self.cycle_started_at,
                "reason": self.reason,
                "created_at": now,
            }
            for kind, amount in self.entries
        ]


# One movement's change to the account row, refused (no row) if it would take the balance
# below zero. Locks the row until the transaction ends.
_MOVE = (
    update(_ACCOUNTS)
    .where(
        _ACCOUNTS.c.id == bindparam("account_id"),
        _ACCOUNTS.c.balance + bindparam("d_balance", type_=BigInteger) >= 0,
    )
    .values(
        balance=_ACCOUNTS.c.balance + bindparam("d_balance", type_=BigInteger),
        held=_ACCOUNTS.c.held + bindparam("d_held", type_=BigInteger),
        active_jobs=_ACCOUNTS.c.active_jobs + bindparam("d_active_jobs", type_=BigInteger),
        spent_this_cycle=_ACCOUNTS.c.spent_this_cycle + bindparam("d_spent", type_=BigInteger),
        granted_this_cycle=_ACCOUNTS.c.granted_this_cycle
        + bindparam("d_granted", type_=BigInteger),
    )
    .returning(_ACCOUNTS.c.balance)
)

# Admission's change to one account: the slots and credits its admitted holds take (the
# batch decided under the row lock that they are there).
_TAKE_SLOTS_AND_HOLD = (
    update(_ACCOUNTS)
    .where(_ACCOUNTS.c.id == bindparam("account_id"))
    .values(
        balance=_ACCOUNTS.c.balance - bindparam("amount", type_=BigInteger),
        held=_ACCOUNTS.c.held + bindparam("amount", type_=BigInteger),
        active_jobs=_ACCOUNTS.c.active_jobs + bindparam("slots", type_=BigInteger),
    )
)
_WALLETS = select(_ACCOUNTS.c.id, _ACCOUNTS.c.balance, _ACCOUNTS.c.active_jobs).where(
    _ACCOUNTS.c.id.in_(bindparam("ids", expanding=True))
)
_USED_KEYS = select(
    _GENERATIONS.c.account_id, _GENERATIONS.c.is_test, _GENERATIONS.c.idempotency_key
).where(
    _GENERATIONS.c.account_id.in_(bindparam("ids", expanding=True)),
    _GENERATIONS.c.idempotency_key.in_(bindparam("keys", expanding=True)),
)
# Most admissions a transaction takes.
MAX_BATCH = 256
# Admissions waiting that start one more writer while others write (`AdmissionQueue`):
# fewer, and a statement per one or two admissions costs more than the wait it saves.
PIPELINED_BATCH = 8

_INSERT_GENERATION = insert(_GENERATIONS)
_INSERT_ENTRY = insert(_LEDGER)
_EXPIRE_IDEMPOTENCY_KEY = (
    update(_GENERATIONS)
    .where(
        _GENERATIONS.c.account_id == bindparam("b_account_id"),
        _GENERATIONS.c.is_test == bindparam("b_is_test"),
        _GENERATIONS.c.idempotency_key == bindparam("b_idempotency_key"),
        _GENERATIONS.c.created_at < bindparam("older_than"),
    )
    .values(idempotency_key=None)
)
_SLOTS_AND_BALANCE = select(_ACCOUNTS.c.active_jobs, _ACCOUNTS.c.balance).where(
    _ACCOUNTS.c.id == bindparam("account_id")
)
_WALLET = select(_ACCOUNTS.c.balance, _ACCOUNTS.c.held).where(
    _ACCOUNTS.c.id == bindparam("account_id")
)
_LOCK_CYCLE = (
    select(_ACCOUNTS.c.cycle_anchor, _ACCOUNTS.c.cycle_resets_at)
    .where(_ACCOUNTS.c.id == bindparam("account_id"))
    .with_for_update()
)


def _expiry_params(admission: Admission) -> dict[str, Any]:
    return {
        "b_account_id": admission.generation.account_id,
        "b_is_test": admission.generation.is_test,
        "b_idempotency_key": admission.generation.idempotency_key,
        "older_than": admission.idempotency_keys_before,
    }


class KeyTaken(IntegrityError):
    """The admission's Idempotency-Key belongs to a generation of its account committed
    first (or earlier in its batch): nothing was written for it."""

    def __init__(self) -> None:
        super().__init__("INSERT INTO generations", None, ValueError("Idempotency-Key taken"))


# What a hold comes to: the balance after it, None (refused: no slot or no credits), or
# the exception to raise in its caller.
Outcome: TypeAlias = int | Exception | None
# An Idempotency-Key in the unique index's terms: (account, key mode, key).
UsedKey: TypeAlias = tuple[str, bool, str]


def _key_of(admission: Admission) -> UsedKey | None:
    generation = admission.generation
    if generation.idempotency_key is None:
        return None
    return generation.account_id, generation.is_test, generation.idempotency_key


def _in_order(
    batch: Sequence[Admission], wallets: dict[str, tuple[int, int]], used: set[UsedKey]
) -> list[Outcome]:
    """One-by-one admission, in arrival order, from the accounts' (balance, active jobs)
    as locked and the Idempotency-Keys already `used`: each admission's balance after its
    hold, None where a limit refused it, KeyTaken where its key was used (before, or by
    an admission earlier in the batch). A refused admission takes nothing, key included."""
    left = dict(wallets)
    used = set(used)
    outcomes: list[Outcome] = []
    for admission in batch:
        account_id = admission.generation.account_id
        key = _key_of(admission)
        if key is not None and key in used:
            outcomes.append(KeyTaken())
            continue
        balance, active = left.get(account_id, (0, admission.concurrent_limit))
        if active >= admission.concurrent_limit or balance < admission.amount:
            outcomes.append(None)
            continue
        left[account_id] = (balance - admission.amount, active + 1)
        if key is not None:
            used.add(key)
        outcomes.append(balance - admission.amount)
    return outcomes


def _committed(batch: Sequence[Admission], outcomes: list[Outcome]) -> list[Outcome]:
    """Count a committed batch in the metrics."""
    observe_admission(len(batch))
    count_credits(
        held=sum(a.amount for a, o in zip(batch, outcomes, strict=True) if isinstance(o, int))
    )
    return outcomes


class AdmissionQueue:
    """Group commit: `admit` waits while a batch is being written; whatever waits when a
    writer is free goes into its next batch (at most MAX_BATCH). No timer: an admission
    alone is written at once. Up to `writers` batches are written at the same time, each
    taking what waited when it started; a further writer starts once PIPELINED_BATCH
    admissions wait (PostgreSQL: while one batch's statement is on the wire and its
    answer waits its turn on the event loop, the next is already sent; batches for the
    same account then queue on its row lock in the database). A batch the database
    refuses for a row (a constraint no check expected) is written again one admission at
    a time, so one bad row fails only its own submit; any other failure is every
    admission's answer."""

    def __init__(
        self, write: Callable[[Sequence[Admission]], Awaitable[list[Outcome]]], writers: int = 1
    ) -> None:
        self._write = write
        self._max_writers = writers
        self._waiting: list[tuple[Admission, asyncio.Future[Outcome]]] = []
        self._writers: set[asyncio.Task[None]] = set()

    async def admit(self, admission: Admission) -> int | None:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((admission, future))
        if not self._writers or (
            len(self._writers) < self._max_writers and len(self._waiting) >= PIPELINED_BATCH
        ):
            writer = asyncio.create_task(self._write_batches())
            self._writers.add(writer)
            # (Also if it is canceled before it starts and never reaches its `finally`.)
            writer.add_done_callback(self._writers.discard)
        # A caller canceled while its batch is written still gets admitted (as any
        # request whose commit outran its client); canceled before, it is left out.
        outcome = await future
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def _write_batches(self) -> None:
        try:
            while self._waiting:
                batch = [(a, f) for a, f in self._waiting[:MAX_BATCH] if not f.done()]
                del self._waiting[:MAX_BATCH]
                if batch:
                    outcomes = await self._outcomes([a for a, _ in batch])
                    for (_, future), outcome in zip(batch, outcomes, strict=True):
                        if not future.done():
                            future.set_result(outcome)
        except BaseException:
            for _, future in self._waiting:
                future.cancel()
            self._waiting.clear()
            raise
        finally:
            # Before the task ends, not in a done callback: an admission arriving in
            # between must see a free writer.
            self._writers.discard(asyncio.current_task())

    async def _outcomes(self, batch: Sequence[Admission]) -> list[Outcome]:
        try:
            return await self._write(batch)
        except (IntegrityError, DataError) as exc:
            # A row the database refused: find it by writing them one at a time.
            if len(batch) == 1:
                return [exc]
        except Exception as exc:
            # The database itself (unreachable, timed out): the same answer for all, at
            # once, rather than one timeout after another.
            return [exc] * len(batch)
        return [(await self._outcomes([admission]))[0] for admission in batch]


class Ledger(ABC):
    """Every credit movement. `hold` and `available` run their own statements; the other
    operations join the caller's transaction (`session`), whose commit is theirs, and
    expect nothing else to have written the account row in it."""

    # Admission batches written at the same time (`AdmissionQueue`).
    admission_writers = 1

    def __init__(self, db: Database) -> None:
        self.db = db
        self._admissions = AdmissionQueue(self._write_batch, self.admission_writers)

    async def hold(self, admission: Admission) -> int | None:
        """Admission: the generation row, its hold entry and a concurrency slot, all or
        nothing, committed (with whatever other admissions were waiting: group commit).
        The balance after the hold, or None when the slot or the credits were not there
        (nothing written). Raises IntegrityError (`KeyTaken`) when another request took
        the same Idempotency-Key first."""
        return await self._admissions.admit(admission)

    # -- dialect-specific forms ----------------------------------------------------------

    @abstractmethod
    async def _write_batch(self, batch: Sequence[Admission]) -> list[Outcome]:
        """Admit `batch` in one transaction (`_admit_batch`), committed."""

    @abstractmethod
    async def _move(self, session: AsyncSession, movement: Movement) -> int | None:
        """Apply a movement; the new balance, or None (nothing written) if it would take
        the balance below zero."""

    # -- operations ----------------------------------------------------------------------

    async def available(self, account_id: str) -> tuple[int, int]:
        """(active jobs, balance) as committed now: which limit refused a hold."""
        async with self.db.autocommit() as connection:
            row = (await connection.execute(_SLOTS_AND_BALANCE, {"account_id": account_id})).one()
        return int(row.active_jobs), int(row.balance)

    async def settle(
        self,
        session: AsyncSession,
        account_id: str,
        generation_id: str,
        held: int,
        charge: int,
    ) -> None:
        """A generation's end: its slot back, the whole hold released and `charge`
        (0 ≤ charge ≤ held) captured. The unique (generation, kind) constraint makes a
        second settlement fail instead of paying twice; callers guard with the
        generation's status (row locked) as well."""
        if not 0 <= charge <= held:
            raise ValueError(f"charge {charge} outside 0..{held}")
        entries = ((LedgerKind.RELEASE, held), (LedgerKind.CAPTURE, -charge))
        credits_on_commit(session, captured=charge, released=held)
        await self._move(
            session,
            Movement(
                account_id,
                tuple((kind, amount) for kind, amount in entries if amount),
                held=-held,
                active_jobs=-1,
                spent=charge,
                generation_id=generation_id,
            ),
        )

    async def release(
        self, session: AsyncSession, account_id: str, generation_id: str, held: int
    ) -> None:
        """A generation ended without a charge (failed, canceled): slot and hold back."""
        await self.settle(session, account_id, generation_id, held, 0)

    async def grant(
        self, session: AsyncSession, account_id: str, amount: int, reason: str | None
    ) -> None:
        """An operator's one-off grant; counts toward this cycle's granted credits."""
        if not 1 <= amount <= MAX_CREDIT_AMOUNT:
            raise AdminInvalid(
                "amount", f"must be a positive whole number of credits, at most {MAX_CREDIT_AMOUNT}"
            )
        await _check_wallet_room(session, account_id, amount)
        await self._move(
            session,
            Movement(
                account_id,
                ((LedgerKind.GRANT, amount),),
                granted=amount,
                reason=reason or "operator grant",
            ),
        )

    async def adjust(
        self, session: AsyncSession, account_id: str, amount: int, reason: str
    ) -> None:
        """A signed correction; it may not take the balance below zero."""
        if amount == 0 or abs(amount) > MAX_CREDIT_AMOUNT:
            raise AdminInvalid(
                "amount", f"must be a non-zero whole number of credits, at most {MAX_CREDIT_AMOUNT}"
            )
        await _check_wallet_room(session, account_id, amount)
        moved = await self._move(
            session, Movement(account_id, ((LedgerKind.ADJUSTMENT, amount),), reason=reason)
        )
        if moved is None:
            balance = (
                (await session.execute(_SLOTS_AND_BALANCE, {"account_id": account_id}))
                .one()
                .balance
            )
            raise AdminInvalid("amount", f"would make the balance negative (balance {balance})")

    async def grant_cycle(
        self,
        session: AsyncSession,
        account_id: str,
        amount: int,
        *,
        cycle_started_at: datetime,
        counts_as_granted: bool = True,
    ) -> None:
        """The grant of one billing cycle (at most one per cycle start, unique in the
        ledger)."""
        await self._move(
            session,
            Movement(
                account_id,
                ((LedgerKind.GRANT, amount),) if amount > 0 else (),
                granted=amount if counts_as_granted else 0,
                cycle_started_at=cycle_started_at,
                reason="cycle grant",
            ),
        )

    async def roll_cycles(
        self, session: AsyncSession, account_id: str, monthly_credits: int
    ) -> bool:
        """Advance the account past every cycle boundary that has passed, granting each
        cycle's credits. Idempotent under the account's row lock; whether anything
        changed."""
        anchor, resets_at = (await session.execute(_LOCK_CYCLE, {"account_id": account_id})).one()
        now = utcnow()
        starts: list[datetime] = []
        while resets_at <= now:
            starts.append(resets_at)
            resets_at = add_months(anchor, _months_between(anchor, resets_at) + 1)
        if not starts:
            return False
        await session.execute(
            update(_ACCOUNTS)
            .where(_ACCOUNTS.c.id == account_id)
            .values(
                cycle_started_at=starts[-1],
                cycle_resets_at=resets_at,
                spent_this_cycle=0,
                granted_this_cycle=max(monthly_credits, 0),
                updated_at=now,
            )
        )
        for started in starts:
            await self.grant_cycle(
                session,
                account_id,
                monthly_credits,
                cycle_started_at=started,
                counts_as_granted=False,
            )
        return True


def _write_admitted(connection: Connection, admitted: Sequence[Admission]) -> None:
    """SQLite: the admitted generations, the accounts' slots and credits, the hold entries
    and the first change-feed events. Each INSERT is one multi-row statement: the writer
    thread gives up the GIL around every step of SQLite, and on a busy event loop it waits
    up to the switch interval (5 ms) to get it back, so a statement per row (executemany)
    made a batch of 30 take 20+ ms."""
    moves: dict[str, list[int]] = {}
    for admission in admitted:
        move = moves.setdefault(admission.generation.account_id, [0, 0])
        move[0] += admission.amount
        move[1] += 1
    _insert_rows(connection, _GENERATIONS, [a.generation.row() for a in admitted])
    connection.execute(
        _TAKE_SLOTS_AND_HOLD,
        [
            {"account_id": account_id, "amount": amount, "slots": slots}
            for account_id, (amount, slots) in moves.items()
        ],
    )
    _insert_rows(
        connection,
        _LEDGER,
        [
            row
            for a in admitted
            if a.amount
            for row in Movement(
                a.generation.account_id,
                ((LedgerKind.HOLD, -a.amount),),
                generation_id=a.generation.id,
            ).entry_rows(a.generation.created_at)
        ],
    )
    # Each one's first change-feed event (`events.feed`), next to its hold; not money.
    _insert_rows(
        connection,
        EVENTS,
        [
            event_row(a.generation.account_id, a.generation.id, a.generation.status)
            for a in admitted
        ],
    )


# Most bound parameters in one SQLite statement (SQLITE_MAX_VARIABLE_NUMBER).
_SQLITE_MAX_PARAMETERS = 32_766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999


def _insert_rows(connection: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """SQLite: `rows` (all with the same keys) inserted by multi-row INSERTs, values
    converted by the columns' own types as SQLAlchemy would."""
    if not rows:
        return
    names = tuple(rows[0])
    processors = _bind_processors(table, names, connection.dialect)
    per_statement = max(1, _SQLITE_MAX_PARAMETERS // len(names))
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        values: list[Any] = []
        for row in chunk:
            values += [
                value if process is None else process(value)
                for process, value in zip(processors, (row[name] for name in names), strict=True)
            ]
        connection.exec_driver_sql(_multi_row_insert(table.name, names, len(chunk)), tuple(values))


@functools.cache
def _bind_processors(
    table: Table, names: tuple[str, ...], dialect: Dialect
) -> tuple[Callable[[Any], Any] | None, ...]:
    return tuple(table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names)


@functools.lru_cache(maxsize=1024)
def _multi_row_insert(table: str, names: tuple[str, ...], rows: int) -> str:
    row = "(" + ", ".join("?" * len(names)) + ")"
    columns = ", ".join(f'"{name}"' for name in names)
    return f'INSERT INTO "{table}" ({columns}) VALUES ' + ", ".join([row] * rows)


class SqliteLedger(Ledger):
    """SQLite: every write transaction holds the database write lock, so statements run
    one after the other inside it; admission is one hand-off to the writer thread."""

    async def _write_batch(self, batch: Sequence[Admission]) -> list[Outcome]:
        def write(connection: Connection) -> list[Outcome]:
            ids = sorted({admission.generation.account_id for admission in batch})
            keyed = [a for a in batch if a.generation.idempotency_key]
            used: set[UsedKey] = set()
            if keyed:
                connection.execute(_EXPIRE_IDEMPOTENCY_KEY, [_expiry_params(a) for a in keyed])
                # Under the write lock nobody else inserts: the keys read are all there are.
                keys = sorted({key for _, _, key in filter(None, map(_key_of, keyed))})
                rows = connection.execute(_USED_KEYS, {"ids": ids, "keys": keys})
                used = {(row.account_id, bool(row.is_test), row.idempotency_key) for row in rows}
            wallets = {
                row.id: (int(row.balance), int(row.active_jobs))
                for row in connection.execute(_WALLETS, {"ids": ids})
            }
            outcomes = _in_order(batch, wallets, used)
            admitted = [a for a, o in zip(batch, outcomes, strict=True) if isinstance(o, int)]
            if admitted:
                _write_admitted(connection, admitted)
                mark_events_written(connection)
            return outcomes

        # The write lock is the row lock: the wallets read inside it are current.
        return _committed(batch, await self.db.run_sqlite_write(write))

    async def _move(self, session: AsyncSession, movement: Movement) -> int | None:
        balance = (await session.execute(_MOVE, movement.params())).scalar_one_or_none()
        if balance is None:
            return None
        if movement.entries:
            await session.execute(_INSERT_ENTRY, movement.entry_rows(utcnow()))
        return int(balance)


def _postgres_move() -> Any:
    """A movement in one statement: the account UPDATE, and the entries inserted from its
    result (`unnest` of the kinds and amounts), so a refused update records nothing."""
    account = _MOVE.cte("account")
    entries = (
        func.unnest(
            bindparam("kinds", type_=ARRAY(String)), bindparam("amounts", type_=ARRAY(BigInteger))
        )
        .table_valued("kind", "amount")
        .render_derived(name="entry", with_types=False)
    )
    record = (
        insert(_LEDGER)
        .from_select(
            [
                "account_id",
                "kind",
                "amount",
                "generation_id",
                "cycle_started_at",
                "reason",
                "created_at",
            ],
            select(
                bindparam("account_id", type_=String),
                entries.c.kind,
                entries.c.amount,
                bindparam("e_generation_id", type_=String),
                bindparam("e_cycle_started_at", type_=_LEDGER.c.cycle_started_at.type),
                bindparam("e_reason", type_=String),
                bindparam("e_created_at", type_=_LEDGER.c.created_at.type),
            )
            .select_from(account)
            .join(entries, true()),
        )
        .cte("record")
    )
    return select(account.c.balance).add_cte(record)


_POSTGRES_MOVE = _postgres_move()


def _postgres_admit() -> TextClause:
    """Admission of a batch in one statement. The batch comes in as arrays, one element
    per admission in arrival order (`unnest … WITH ORDINALITY`); the accounts are locked
    in id order (NO KEY UPDATE: inserts referencing them needn't wait) and read as
    locked; `decided` walks each account's admissions in arrival order (a recursive CTE
    carrying the balance, the active jobs and the keys taken so far), deciding each
    exactly as one-by-one admission would; the admitted ones' generation rows, account
    change, hold entries and first change-feed events are data-modifying CTEs. Answers
    one row per admission, in order: admitted (with the balance after its hold), refused,
    or its Idempotency-Key taken (used by a committed generation or one earlier in the
    batch). A key committed by another process after the statement's snapshot makes the
    INSERT fail (unique index): the whole batch is then written again one by one."""
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    arrays: list[str] = []
    values: list[str] = []
    for name in NEW_GENERATION_COLUMNS:
        sql_type = _GENERATIONS.c[name].type.compile(dialect=dialect)
        as_text = sql_type == "JSONB" or sql_type.startswith("VARCHAR")
        arrays.append(f"CAST(:{name} AS {'text' if as_text else sql_type}[])")
        values.append(f"b.{name}::jsonb" if sql_type == "JSONB" else f"b.{name}")
    columns = ", ".join(NEW_GENERATION_COLUMNS)
    taken = "(r.key IS NOT NULL AND (r.key_used OR r.key = ANY(d.keys)))"
    admitted = f"(NOT {taken} AND d.active < r.lim AND d.balance >= r.amount)"
    return text(
        f"""
WITH RECURSIVE batch AS (
    SELECT * FROM unnest({", ".join(arrays)}, CAST(:lim AS integer[]))
        WITH ORDINALITY AS b({columns}, lim, ord)
), wallet AS (
    SELECT id, balance, active_jobs FROM accounts
    WHERE id = ANY(CAST(:account_ids AS text[]))
    ORDER BY id
    FOR NO KEY UPDATE
), ranked AS MATERIALIZED (
    SELECT b.ord, b.account_id, b.credits_estimate AS amount, b.lim,
        CASE WHEN b.idempotency_key IS NOT NULL
            THEN b.is_test::text || ':' || b.idempotency_key END AS key,
        b.idempotency_key IS NOT NULL AND EXISTS (
            SELECT FROM generations g
            WHERE g.account_id = b.account_id AND g.is_test = b.is_test
                AND g.idempotency_key = b.idempotency_key
        ) AS key_used,
        row_number() OVER (PARTITION BY b.account_id ORDER BY b.ord) AS rn
    FROM batch b
), decided(account_id, rn, ord, admitted, taken, balance, active, keys) AS (
    SELECT id, 0::bigint, NULL::bigint, false, false, balance, active_jobs, ARRAY[]::text[]
    FROM wallet
    UNION ALL
    SELECT d.account_id, r.rn, r.ord, {admitted}, {taken},
        d.balance - CASE WHEN {admitted} THEN r.amount ELSE 0 END,
        d.active + CASE WHEN {admitted} THEN 1 ELSE 0 END,
        CASE WHEN {admitted} AND r.key IS NOT NULL THEN d.keys || r.key ELSE d.keys END
    FROM decided d JOIN ranked r ON r.account_id = d.account_id AND r.rn = d.rn + 1
), admitted AS (
    SELECT b.* FROM batch b JOIN decided d ON d.ord = b.ord WHERE d.admitted
), generation AS (
    INSERT INTO generations ({columns})
    SELECT {", ".join(values)} FROM admitted b ORDER BY b.ord
), account AS (
    UPDATE accounts a
    SET balance = a.balance - m.amount, held = a.held + m.amount,
        active_jobs = a.active_jobs + m.slots
    FROM (
        SELECT account_id, sum(credits_estimate)::bigint AS amount, count(*)::integer AS slots
        FROM admitted GROUP BY account_id
    ) m
    WHERE a.id = m.account_id
), hold AS (
    INSERT INTO ledger_entries (account_id, kind, amount, generation_id, created_at)
    SELECT account_id, '{LedgerKind.HOLD.value}', -credits_estimate, id, created_at
    FROM admitted WHERE credits_estimate > 0 ORDER BY ord
), event AS (
    INSERT INTO generation_events (account_id, generation_id, kind, status, created_at)
    SELECT account_id, id, '{GENERATION_EVENT}', status, CAST(:event_at AS timestamptz)
    FROM admitted ORDER BY ord
)
SELECT coalesce(d.admitted, false) AS admitted, coalesce(d.taken, false) AS taken, d.balance
FROM batch b LEFT JOIN decided d ON d.ord = b.ord
ORDER BY b.ord
"""
    )


_POSTGRES_ADMIT = _postgres_admit()


def _postgres_admit_params(batch: Sequence[Admission]) -> dict[str, Any]:
    rows = [admission.generation.row() for admission in batch]
    params: dict[str, Any] = {name: [row[name] for row in rows] for name in NEW_GENERATION_COLUMNS}
    for name in _POSTGRES_JSON_COLUMNS:
        params[name] = [json.dumps(value) for value in params[name]]
    params["lim"] = [admission.concurrent_limit for admission in batch]
    params["account_ids"] = sorted(set(params["account_id"]))
    params["event_at"] = utcnow()
    return params


_POSTGRES_JSON_COLUMNS = tuple(
    name for name in NEW_GENERATION_COLUMNS if "JSON" in repr(_GENERATIONS.c[name].type)
)


class PostgresLedger(Ledger):
    """PostgreSQL: each operation is one statement (data-modifying CTEs) on the account
    row, which it locks (row lock) until the transaction ends."""

    # Three batches on the wire at once: at 64 connections on 2 busy cores, a batch's
    # answer waited ~40 ms for its turn on the event loop while the statement took ~3 ms
    # in the server; one writer made that wait the throughput (bench/README, issue 9).
    admission_writers = 3

    async def _write_batch(self, batch: Sequence[Admission]) -> list[Outcome]:
        keyed = [_expiry_params(a) for a in batch if a.generation.idempotency_key]
        if keyed:
            # Before the admission, in autocommit: it locks old generation rows, which
            # must not be taken after account rows (settlements lock generation → account).
            async with self.db.autocommit() as connection:
                await connection.execute(_EXPIRE_IDEMPOTENCY_KEY, keyed)
        # One statement, its own transaction: one round trip for the whole batch.
        async with self.db.autocommit() as connection:
            rows = (await connection.execute(_POSTGRES_ADMIT, _postgres_admit_params(batch))).all()
            outcomes: list[Outcome] = [
                KeyTaken() if row.taken else int(row.balance) if row.admitted else None
                for row in rows
            ]
            if any(row.admitted for row in rows):
                mark_events_written(connection)
        return _committed(batch, outcomes)

    async def _move(self, session: AsyncSession, movement: Movement) -> int | None:
        params = movement.params()
        params.update(
            kinds=[kind.value for kind, _ in movement.entries],
            amounts=[amount for _, amount in movement.entries],
            e_generation_id=movement.generation_id,
            e_cycle_started_at=movement.cycle_started_at,
            e_reason=movement.reason,
            e_created_at=utcnow(),
        )
        balance = (await session.execute(_POSTGRES_MOVE, params)).scalar_one_or_none()
        return None if balance is None else int(balance)


def open_ledger(db: Database) -> Ledger:
    """The ledger for this database's dialect: chosen once, where the database is opened."""
    return SqliteLedger(db) if db.is_sqlite else PostgresLedger(db)


async def _check_wallet_room(session: AsyncSession, account_id: str, amount: int) -> None:
    """A wallet holds at most MAX_BALANCE credits (available + held): every ledger sum
    then stays far inside 64 bits."""
    wallet = (await session.execute(_WALLET, {"account_id": account_id})).one()
    room = MAX_BALANCE - wallet.balance - wallet.held
    if amount > room:
        raise AdminInvalid(
            "amount",
            f"a wallet holds at most {MAX_BALANCE} credits; at most {max(0, room)} can be added",
        )


def _months_between(anchor: datetime, moment: datetime) -> int:
    months = (moment.year - anchor.year) * 12 + moment.month - anchor.month
    while add_months(anchor, months) > moment:
        months -= 1
    while add_months(anchor, months + 1) <= moment:
        months += 1
    return months


__all__ = [
    "MAX_BATCH",
    "Admission",
    "AdmissionQueue",
    "KeyTaken",
    "Ledger",
    "Movement",
    "PostgresLedger",
    "SqliteLedger",
    "open_ledger",
]
