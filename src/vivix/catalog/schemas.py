"""Shapes of the catalog file (operator-editable data) and of the /models response."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vivix.kit.bounds import MAX_PRICE_CREDITS

ParamType = Literal["string", "integer", "enum", "boolean", "string[]"]
Category = Literal["image", "video", "audio"]
ParamValue = str | int | bool


class ParamSpec(BaseModel):
    """One accepted param. `format = "http_url"` makes string items http(s) URLs."""

    model_config = ConfigDict(extra="forbid")

    type: ParamType
    required: bool = False
    default: ParamValue | None = None
    values: list[str] | None = None
    min: int | None = None
    max: int | None = None
    min_length: int | None = None
    max_length: int | None = None
    max_items: int | None = None
    item_max_length: int | None = None
    format: Literal["http_url"] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        if self.type == "enum" and not self.values:
            raise ValueError("an enum param needs `values`")
        if self.type != "enum" and self.values is not None:
            raise ValueError("only enum params take `values`")
        if self.type == "integer" and (self.min is None or self.max is None):
            raise ValueError("an integer param needs `min` and `max`")
        if self.default is not None:
            _check_default(self)
        return self


def _check_default(spec: ParamSpec) -> None:
    default = spec.default
    ok = {
        "string": isinstance(default, str),
        "integer": isinstance(default, int) and not isinstance(default, bool),
        "enum": isinstance(default, str) and default in (spec.values or []),
        "boolean": isinstance(default, bool),
        "string[]": False,
    }[spec.type]
    if not ok:
        raise ValueError(f"default {default!r} does not fit a {spec.type} param")
    if spec.type == "integer" and not (spec.min or 0) <= int(default) <= (spec.max or 0):  # type: ignore[arg-type]
        raise ValueError(f"default {default!r} is outside {spec.min}..{spec.max}")


class PricingRow(BaseModel):
    """Credits per result when every `when` entry equals the request's param value; rows are
    tried in order, the first match prices. `per_second` adds credits × `duration`."""

    model_config = ConfigDict(extra="forbid")

    when: dict[str, ParamValue] = Field(default_factory=dict)
    credits: Annotated[int, Field(ge=0, le=MAX_PRICE_CREDITS)]
    per_second: Annotated[int, Field(ge=0, le=MAX_PRICE_CREDITS)] = 0


class RouteSpec(BaseModel):
    """One way to render the model: a provider and its upstream model id, tried in order."""

    model_config = ConfigDict(extra="forbid")

    provider: str
    upstream_model: str = ""
    # Provider-specific options, e.g. a ComfyUI workflow file or fixed upstream inputs.
    options: dict[str, Any] = Field(default_factory=dict)


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slug: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.\-]{1,98}[a-z0-9]$")]
    name: str
    category: Category
    creator: str
    description: str
    params: dict[str, ParamSpec]
    pricing: list[PricingRow]
    routes: list[RouteSpec]
    default_tiers: list[str] = Field(default_factory=lambda: ["pro", "ultimate"])
    example_request: dict[str, Any] | None = None
    deadline_seconds: Annotated[int, Field(ge=1)] = 600

    @model_validator(mode="after")
    def _prompt_is_declared(self) -> ModelSpec:
        prompt = self.params.get("prompt")
        if prompt is None or prompt.type != "string" or not prompt.required:
            raise ValueError(f"{self.slug}: every model takes a required string `prompt`")
        if not self.pricing:
            raise ValueError(f"{self.slug}: a model needs at least one pricing row")
        if not self.routes:
            raise ValueError(f"{self.slug}: a model needs at least one route")
        return self


class CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # An operator's file either extends the shipped catalog (same slug replaces that model)
    # or replaces it entirely.
    mode: Literal["extend", "replace"] = "extend"
    models: list[ModelSpec] = Field(default_factory=list)


class CreditsBand(BaseModel):
    min: int
    max: int


class RateLimitInfo(BaseModel):
    calls_per_minute: int
    concurrent_jobs: int


class ModelOut(BaseModel):
    slug: str
    name: str
    category: str
    creator: str
    description: str
    params: dict[str, dict[str, Any]]
    params_schema: dict[str, Any]
    credits_band: CreditsBand
    example_request: dict[str, Any]
    available: bool = True
    unavailable_reason: Literal["not_configured", "circuit_open"] | None = None


class ModelsOut(BaseModel):
    tier: str
    credits_balance: int
    rate_limit: RateLimitInfo
    models: list[ModelOut]
