"""Retention: outputs and generation records are kept for the configured number of days
after a generation finished (`VIVIX_RETENTION__OUTPUTS_DAYS`, `__GENERATIONS_DAYS`); unset
keeps them forever (API.md: output URLs stay valid for the configured retention, default
forever).

- Outputs past the window: their files are deleted from storage, then the generation is
  marked (`expired_at`); the API shows it with `output_url` null, no `output_urls` /
  `outputs`, and `expired: true`.
- Records past the window: what the customer sent and what the providers said is erased
  (params with the prompt, metadata, upstream handle, operator error text); the row stays
  with its id, model, status, credits and times, because the ledger names it and the
  money audit checks every ledger entry against a generation. A record's outputs go no
  later than the record itself.

Never touches the ledger or an account: balances and entries stay as they were. Each
worker runs a pass every `sweep_interval_seconds`; rows another worker is pruning are
skipped (PostgreSQL `SKIP LOCKED`), and each batch is its own transaction, its files
deleted while its rows are locked, so a crash leaves at worst unmarked rows whose files
are already gone (deleting a missing file is not an error: the next pass finishes them).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from vivix.kit.clock import utcnow
from vivix.kit.metrics import retention_pruned
from vivix.operations import repository

if TYPE_CHECKING:
    from vivix.runtime import Runtime
    from vivix.settings import RetentionSettings

log = structlog.get_logger(__name__)


@dataclass
class PruneReport:
    outputs_expired: int = 0  # generations whose files were deleted
    files_deleted: int = 0
    bytes_deleted: int = 0
    records_erased: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "outputs_expired": self.outputs_expired,
            "files_deleted": self.files_deleted,
            "bytes_deleted": self.bytes_deleted,
            "records_erased": self.records_erased,
        }


def windows(settings: RetentionSettings) -> tuple[int | None, int | None]:
    """(days outputs are kept, days records are kept); outputs go no later than records."""
    outputs, records = settings.outputs_days, settings.generations_days
    if records is not None and (outputs is None or outputs > records):
        outputs = records
    return outputs, records


def enabled(settings: RetentionSettings) -> bool:
    return settings.outputs_days is not None or settings.generations_days is not None


async def prune(runtime: Runtime, now: datetime | None = None) -> PruneReport:
    """One pass over everything past its window, batch by batch."""
    now = now or utcnow()
    settings = runtime.settings.retention
    outputs_days, records_days = windows(settings)
    report = PruneReport()
    if outputs_days is not None:
        cutoff = now - timedelta(days=outputs_days)
        while await _expire_outputs(runtime, cutoff, settings.batch_size, now, report):
            pass
    if records_days is not None:
        cutoff = now - timedelta(days=records_days)
        while await _erase_records(runtime, cutoff, settings.batch_size, now, report):
            pass
    if report.outputs_expired or report.records_erased:
        log.info("retention_pruned", **report.as_dict())
    return report


async def _expire_outputs(
    runtime: Runtime, cutoff: datetime, limit: int, now: datetime, report: PruneReport
) -> int:
    async with runtime.db.transaction() as session:
        batch = await repository.lock_outputs_to_expire(session, cutoff, limit)
        for generation in batch:
            for output in generation.outputs or []:
                key = output.get("key")
                if key:
                    await runtime.storage.delete(key)
                    report.files_deleted += 1
                    report.bytes_deleted += int(output.get("bytes") or 0)
            generation.expired_at = now
    report.outputs_expired += len(batch)
    retention_pruned.labels("outputs").inc(len(batch))
    return len(batch)


async def _erase_records(
    runtime: Runtime, cutoff: datetime, limit: int, now: datetime, report: PruneReport
) -> int:
    async with runtime.db.transaction() as session:
        batch = await repository.lock_records_to_erase(session, cutoff, limit)
        for generation in batch:
            generation.params = {}
            generation.metadata_ = {}
            generation.upstream_handle = None
            generation.last_error = None
            generation.attempt_errors = None
            generation.erased_at = now
    report.records_erased += len(batch)
    retention_pruned.labels("generations").inc(len(batch))
    return len(batch)


@dataclass
class StorageUsage:
    files: int = 0
    bytes: int = 0
    generations: int = 0
    by_account: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "bytes": self.bytes,
            "generations": self.generations,
            "by_account": self.by_account,
        }


async def storage_usage(runtime: Runtime) -> StorageUsage:
    """The outputs in storage, as the database records them (files, bytes), in total and
    by account name."""
    usage = StorageUsage()
    per_account: dict[str, dict[str, int]] = defaultdict(
        lambda: {"files": 0, "bytes": 0, "generations": 0}
    )
    async with runtime.db.read() as session:  # one snapshot, streamed in a transaction
        names = await repository.account_names(session)
        async for account_id, outputs in repository.stored_outputs(session):
            stored = [o for o in outputs or [] if o.get("key")]
            if not stored:
                continue
            size = sum(int(o.get("bytes") or 0) for o in stored)
            row = per_account[names.get(account_id, account_id)]
            row["files"] += len(stored)
            row["bytes"] += size
            row["generations"] += 1
            usage.files += len(stored)
            usage.bytes += size
            usage.generations += 1
    usage.by_account = dict(sorted(per_account.items()))
    return usage
