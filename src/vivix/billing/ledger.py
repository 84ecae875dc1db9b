"""The credit ledger: the one component that moves credits and concurrency slots.

Every movement is an append-only `ledger_entries` row written in the same transaction as
the account's cached totals (`balance`, `held`, `active_jobs`, the cycle counters) and as
the state change that causes it. The operations:

- `hold`: admission. Takes a concurrency slot and the estimate's credits only if both are
  there, and inserts the generation row it holds for with its hold entry: all or nothing,
  in its own transaction (so a refusal leaves no trace).
- `settle` / `release`: a generation's end. Gives the slot back, releases the whole hold
  and captures the charge (`release`: nothing captured).
- `grant`, `adjust`, `grant_cycle`, `roll_cycles`: operator credits and billing cycles.

Nothing else writes ledger rows or those account columns. The SQL differs by dialect
(PostgreSQL: one statement with data-modifying CTEs, one round trip, the account row
locked only while it runs; SQLite: a few statements inside the serialized write
transaction), so each operation has its SQLite and PostgreSQL forms side by side in
`SqliteLedger` and `PostgresLedger`. `open_ledger` picks one where the database is opened.

Lock order everywhere is generation row → account row, so settlements cannot deadlock
with each other or with admission (which locks only the account).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    String,
    bindparam,
    func,
    insert,
    literal,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from vivix.events.feed import EVENTS, GENERATION, append_sync, event_row
from vivix.kit.bounds import MAX_BALANCE, MAX_CREDIT_AMOUNT
from vivix.kit.clock import add_months, utcnow
from vivix.kit.db import Database, mark_events_written
from vivix.kit.errors import AdminInvalid
from vivix.kit.metrics import count_credits, credits_on_commit
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

# Admission's change to the account row: one slot and `:amount` credits, only if both are
# there; returns the new balance (no row: refused, nothing changed).
_TAKE_SLOT_AND_HOLD = (
    update(_ACCOUNTS)
    .where(
        _ACCOUNTS.c.id == bindparam("account_id"),
        _ACCOUNTS.c.balance >= bindparam("amount", type_=BigInteger),
        _ACCOUNTS.c.active_jobs < bindparam("concurrent_limit", type_=BigInteger),
    )
    .values(
        balance=_ACCOUNTS.c.balance - bindparam("amount", type_=BigInteger),
        held=_ACCOUNTS.c.held + bindparam("amount", type_=BigInteger),
        active_jobs=_ACCOUNTS.c.active_jobs + 1,
    )
    .returning(_ACCOUNTS.c.balance)
)

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


def _take_params(admission: Admission) -> dict[str, Any]:
    return {
        "account_id": admission.generation.account_id,
        "amount": admission.amount,
        "concurrent_limit": admission.concurrent_limit,
    }


class _Refused(Exception):
    """Raised inside a write transaction to roll it back."""


class Ledger(ABC):
    """Every credit movement. `hold` and `available` run their own statements; the other
    operations join the caller's transaction (`session`), whose commit is theirs, and
    expect nothing else to have written the account row in it."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- dialect-specific forms ----------------------------------------------------------

    @abstractmethod
    async def hold(self, admission: Admission) -> int | None:
        """Admission: the generation row, its hold entry and a concurrency slot, all or
        nothing, committed. The balance after the hold, or None when the slot or the
        credits were not there (nothing written). Raises IntegrityError when another
        request took the same Idempotency-Key first."""

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


class SqliteLedger(Ledger):
    """SQLite: every write transaction holds the database write lock, so statements run
    one after the other inside it; admission is one hand-off to the writer thread."""

    async def hold(self, admission: Admission) -> int | None:
        def admit(connection: Connection) -> int:
            generation = admission.generation
            if generation.idempotency_key is not None:
                connection.execute(_EXPIRE_IDEMPOTENCY_KEY, _expiry_params(admission))
            connection.execute(_INSERT_GENERATION, generation.row())
            if admission.amount:
                connection.execute(
                    _INSERT_ENTRY,
                    Movement(
                        generation.account_id,
                        ((LedgerKind.HOLD, -admission.amount),),
                        generation_id=generation.id,
                    ).entry_rows(generation.created_at),
                )
            balance = connection.execute(
                _TAKE_SLOT_AND_HOLD, _take_params(admission)
            ).scalar_one_or_none()
            if balance is None:
                raise _Refused()
            # The stream's first event, next to the hold (the feed is not money).
            append_sync(
                connection, event_row(generation.account_id, generation.id, generation.status)
            )
            return int(balance)

        try:
            balance = await self.db.run_sqlite_write(admit)
        except _Refused:
            return None
        count_credits(held=admission.amount)  # committed
        return balance

    async def _move(self, session: AsyncSession, movement: Movement) -> int | None:
        balance = (await session.execute(_MOVE, movement.params())).scalar_one_or_none()
        if balance is None:
            return None
        if movement.entries:
            await session.execute(_INSERT_ENTRY, movement.entry_rows(utcnow()))
        return int(balance)


def _postgres_admission() -> Any:
    """Admission in one statement: the UPDATE takes the slot and the credits only if both
    are there; the generation row and the hold entry are inserted from its result, so a
    refusal inserts nothing. In autocommit it is one round trip and its own transaction,
    and the account row is locked only while it runs."""
    account = _TAKE_SLOT_AND_HOLD.cte("account")
    generation = _INSERT_GENERATION.from_select(
        list(NEW_GENERATION_COLUMNS),
        select(
            *(
                bindparam(f"g_{name}", type_=_GENERATIONS.c[name].type)
                for name in NEW_GENERATION_COLUMNS
            )
        ).select_from(account),
    ).cte("generation")
    amount = bindparam("amount", type_=BigInteger)
    hold = (
        insert(_LEDGER)
        .from_select(
            ["account_id", "kind", "amount", "generation_id", "created_at"],
            select(
                bindparam("account_id", type_=String),
                literal(LedgerKind.HOLD.value, String),
                -amount,
                bindparam("g_id", type_=String),
                bindparam("g_created_at", type_=_LEDGER.c.created_at.type),
            )
            .select_from(account)
            .where(amount > 0),
        )
        .cte("hold")
    )
    # The event streams' first event for it (`events.feed`), from the same result.
    event = (
        insert(EVENTS)
        .from_select(
            ["account_id", "generation_id", "kind", "status", "created_at"],
            select(
                bindparam("account_id", type_=String),
                bindparam("g_id", type_=String),
                literal(GENERATION, String),
                bindparam("g_status", type_=String),
                bindparam("g_created_at", type_=EVENTS.c.created_at.type),
            ).select_from(account),
        )
        .cte("event")
    )
    return select(account.c.balance).add_cte(generation, hold, event)


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


_POSTGRES_ADMISSION = _postgres_admission()
_POSTGRES_MOVE = _postgres_move()


class PostgresLedger(Ledger):
    """PostgreSQL: each operation is one statement (data-modifying CTEs) on the account
    row, which it locks (row lock) until the transaction ends."""

    async def hold(self, admission: Admission) -> int | None:
        generation = admission.generation
        values = {f"g_{name}": value for name, value in generation.row().items()}
        values.update(_take_params(admission))
        async with self.db.autocommit() as connection:
            if generation.idempotency_key is not None:
                await connection.execute(_EXPIRE_IDEMPOTENCY_KEY, _expiry_params(admission))
            balance = (await connection.execute(_POSTGRES_ADMISSION, values)).scalar_one_or_none()
            if balance is not None:
                mark_events_written(connection)
        if balance is None:
            return None
        count_credits(held=admission.amount)  # committed (autocommit)
        return int(balance)

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
    "Admission",
    "Ledger",
    "Movement",
    "PostgresLedger",
    "SqliteLedger",
    "open_ledger",
]
