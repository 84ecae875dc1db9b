from __future__ import annotations

from pydantic import BaseModel

from vivix.catalog.schemas import RateLimitInfo


class CreditsOut(BaseModel):
    balance: int
    held: int
    tier: str
    cycle_resets_at: str
    rate_limit: RateLimitInfo
    spent_this_cycle: int
    granted_this_cycle: int
