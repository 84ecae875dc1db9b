from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from vivix.kit.bounds import MAX_CALLS_PER_MINUTE, MAX_CONCURRENT_JOBS, MAX_CREDIT_AMOUNT


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AccountCreate(_Strict):
    name: str
    tier: str = "pro"
    credits: int | None = Field(default=None, ge=0, le=MAX_CREDIT_AMOUNT)


class AccountUpdate(_Strict):
    tier: str | None = None
    calls_per_minute: int | None = Field(default=None, ge=1, le=MAX_CALLS_PER_MINUTE)
    concurrent_jobs: int | None = Field(default=None, ge=1, le=MAX_CONCURRENT_JOBS)
    monthly_credits: int | None = Field(default=None, ge=0, le=MAX_CREDIT_AMOUNT)


class KeyCreate(_Strict):
    name: str = Field(default="", max_length=100)
    test: bool = False


class CreditGrant(_Strict):
    amount: int = Field(ge=1, le=MAX_CREDIT_AMOUNT)
    reason: str | None = Field(default=None, max_length=500)


class CreditAdjustment(_Strict):
    amount: int  # signed; not zero (the ledger refuses it with the documented error)
    reason: str = Field(min_length=1, max_length=500)


class ModelSlugs(_Strict):
    slugs: list[str] = Field(min_length=1)


class PriceOverrideIn(_Strict):
    factor: str | float | None = None
    rows: list[dict[str, Any]] | None = None


class UserCreate(_Strict):
    email: str = Field(min_length=3, max_length=254)
    account: str | None = None  # name or id; default: a new free account of their own
    operator: bool = False
    password: str | None = Field(default=None, min_length=1, max_length=1000)


class WebhookAdd(_Strict):
    url: str
    events: list[str] | None = None
    description: str | None = None
    include_studio: bool | None = None


class WebhookRotate(_Strict):
    expire_previous_now: bool = False


class WebhookDisable(_Strict):
    reason: str | None = Field(default=None, max_length=300)
