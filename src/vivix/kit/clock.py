"""Time in one place: UTC everywhere, ISO 8601 with `Z` on the wire."""

from __future__ import annotations

import asyncio
import time as _time
from datetime import UTC, datetime
from typing import Protocol


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return as_utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> datetime:
    """Parse an ISO 8601 timestamp; a naive value is taken as UTC. ValueError also for a
    time that leaves the representable range once moved to UTC (9999-12-31T23:59-01:00)."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    try:
        return as_utc(parsed)
    except OverflowError:
        raise ValueError(f"{text!r} is out of range in UTC") from None


def add_months(value: datetime, months: int) -> datetime:
    """Same day-of-month `months` later, clamped to the month's last day."""
    month_index = value.month - 1 + months
    year = value.year + month_index // 12
    month = month_index % 12 + 1
    days_in_month = [31, 29 if _leap(year) else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
    return value.replace(year=year, month=month, day=min(value.day, days_in_month[month - 1]))


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


class Clock(Protocol):
    """What components that wait or stamp times take instead of the module functions, so
    a test can run them without real waits."""

    def now(self) -> datetime: ...

    def time(self) -> float:
        """Seconds since the epoch (HTTP dates)."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return utcnow()

    def time(self) -> float:
        return _time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()
