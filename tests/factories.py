"""Small typed factories over the real operator service (no mocks of our own code)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vivix.admin import service as admin
from vivix.runtime import Runtime


@dataclass(frozen=True)
class AccountWithKey:
    id: str
    name: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


_counter = 0


async def account_with_key(
    runtime: Runtime,
    *,
    tier: str = "pro",
    credits: int | None = None,
    test_key: bool = False,
    name: str | None = None,
    **updates: Any,
) -> AccountWithKey:
    global _counter
    _counter += 1
    name = name or f"acct-{_counter}"
    account = await admin.create_account(runtime, name, tier, credits)
    if updates:
        await admin.update_account(runtime, name, **updates)
    key = await admin.create_key(runtime, name, test=test_key)
    return AccountWithKey(account["id"], name, key["key"])
