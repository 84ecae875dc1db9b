"""The money audit (`vivix audit`, `GET /admin/v1/audit`): the ledger's promises checked
against the tables, listing every row that breaks one.

1. Every account's cached balance equals the sum of its ledger entries.
2. Nothing is negative: balance, held credits, the count of active jobs.
3. Every generation that holds credits has exactly one hold of its estimate; every final
   one (completed, failed, canceled) was settled exactly once — one release of the whole
   hold and at most one capture (only when completed, equal to its `credits_used`); an
   active one (pending, processing) is not settled yet. A free generation (a test key's)
   has no entries at all.
4. The credits an account holds are the holds of its open generations, and its count of
   active jobs is the count of its pending and processing generations.
5. No generation was charged above its estimate.
6. No ledger entry names a generation that doesn't exist.

All queries run in one snapshot (REPEATABLE READ on PostgreSQL, one read transaction on
SQLite), so a live system is audited consistently.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from vivix.billing import repository
from vivix.models import ACTIVE_STATUSES, GenerationStatus

COMPLETED = GenerationStatus.COMPLETED.value


@dataclass
class AuditReport:
    accounts: int = 0
    generations: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, check: str, detail: str, **row: Any) -> None:
        self.problems.append({"check": check, "detail": detail, **row})

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": {"accounts": self.accounts, "generations": self.generations},
            "problems": self.problems,
        }


async def audit_money(session: AsyncSession) -> AuditReport:
    """Run every check; the session must be fresh (the snapshot starts here)."""
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        await connection.exec_driver_sql(
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"
        )
    report = AuditReport()
    accounts = await repository.balances_against_ledger(session)
    generations = await repository.generations_with_their_entries(session)
    orphans = await repository.entries_without_a_generation(session)
    report.accounts, report.generations = len(accounts), len(generations)
    open_holds: dict[str, int] = defaultdict(int)
    active_jobs: dict[str, int] = defaultdict(int)
    for generation in generations:
        _check_generation(report, generation)
        if generation.status in ACTIVE_STATUSES:
            active_jobs[generation.account_id] += 1
            open_holds[generation.account_id] -= int(generation.held)
    for account in accounts:
        _check_account(report, account, open_holds[account.id], active_jobs[account.id])
    for entry in orphans:
        report.add(
            "entry_without_generation",
            f"ledger entry {entry.id} names generation {entry.generation_id}, which does not exist",
            account_id=entry.account_id,
            generation_id=entry.generation_id,
        )
    return report


def _check_account(report: AuditReport, account: Any, holds: int, active: int) -> None:
    row = {"account_id": account.id, "account": account.name}
    if account.balance != account.ledger_total:
        report.add(
            "balance_equals_ledger",
            f"balance {account.balance} but the ledger sums to {account.ledger_total}",
            **row,
        )
    for name in ("balance", "held", "active_jobs"):
        if getattr(account, name) < 0:
            report.add("not_negative", f"{name} is {getattr(account, name)}", **row)
    if account.held != holds:
        report.add(
            "holds_match_open_generations",
            f"holds {account.held} credits but its open generations hold {holds}",
            **row,
        )
    if account.active_jobs != active:
        report.add(
            "active_jobs_match_open_generations",
            f"counts {account.active_jobs} active jobs but {active} generations are open",
            **row,
        )


def _check_generation(report: AuditReport, g: Any) -> None:
    row = {"generation_id": g.id, "account_id": g.account_id, "status": g.status}
    estimate = int(g.credits_estimate)
    hold, released, captured = -int(g.held), int(g.released), -int(g.captured)
    if estimate < 0 or (g.credits_used or 0) < 0:
        report.add("not_negative", f"estimate {estimate}, credits_used {g.credits_used}", **row)
    if estimate == 0:
        if g.holds or g.releases or g.captures:
            report.add(
                "free_generation_has_no_entries", "a generation of 0 credits moved money", **row
            )
        return
    if g.holds != 1 or hold != estimate:
        report.add(
            "one_hold_of_the_estimate",
            f"{g.holds} hold(s) of {hold} credits for an estimate of {estimate}",
            **row,
        )
    if g.status in ACTIVE_STATUSES:
        if g.releases or g.captures:
            report.add("open_generation_not_settled", f"{g.status} but already settled", **row)
        return
    if g.releases != 1 or released != hold:
        report.add(
            "settled_exactly_once",
            f"{g.releases} release(s) of {released} credits for a hold of {hold}",
            **row,
        )
    if g.captures > 1 or (g.captures and g.status != COMPLETED):
        report.add(
            "settled_exactly_once", f"{g.captures} capture(s) for a {g.status} generation", **row
        )
    if captured != (g.credits_used or 0):
        report.add(
            "capture_equals_credits_used",
            f"captured {captured} credits but credits_used is {g.credits_used}",
            **row,
        )
    if (g.credits_used or 0) > estimate or captured > hold:
        report.add(
            "not_above_the_estimate",
            f"charged {max(captured, g.credits_used or 0)} for an estimate of {estimate}",
            **row,
        )
