"""Operator settings: environment variables with the `VIVIX_` prefix, `__` for nesting.

Validated once at start-up; a bad value stops the process with a message naming the
variable instead of failing later in a request.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from vivix.kit.bounds import MAX_CALLS_PER_MINUTE, MAX_CONCURRENT_JOBS, MAX_CREDIT_AMOUNT


class Tier(StrEnum):
    FREE = "free"
    STANDARD = "standard"
    PRO = "pro"
    ULTIMATE = "ultimate"


class TierDefaults(BaseModel):
    api_access: bool
    calls_per_minute: Annotated[int, Field(ge=1, le=MAX_CALLS_PER_MINUTE)]
    concurrent_jobs: Annotated[int, Field(ge=1, le=MAX_CONCURRENT_JOBS)]
    monthly_credits: Annotated[int, Field(ge=0, le=MAX_CREDIT_AMOUNT)]


def _default_tiers() -> dict[Tier, TierDefaults]:
    return {
        Tier.FREE: TierDefaults(
            api_access=False, calls_per_minute=10, concurrent_jobs=1, monthly_credits=0
        ),
        Tier.STANDARD: TierDefaults(
            api_access=False, calls_per_minute=60, concurrent_jobs=2, monthly_credits=3000
        ),
        Tier.PRO: TierDefaults(
            api_access=True, calls_per_minute=240, concurrent_jobs=5, monthly_credits=15000
        ),
        Tier.ULTIMATE: TierDefaults(
            api_access=True, calls_per_minute=600, concurrent_jobs=20, monthly_credits=60000
        ),
    }


class DatabaseSettings(BaseModel):
    # At most 30 connections a process, all kept once opened: overflow connections are
    # closed on return, and under load (more requests in flight than the pool) each new
    # one costs a PostgreSQL connect (bench/README.md, issue 9).
    pool_size: Annotated[int, Field(ge=1)] = 30
    max_overflow: Annotated[int, Field(ge=0)] = 0
    # PostgreSQL: a second, small asyncpg pool for the hot single-statement reads (status
    # read, caller lookup), on top of pool_size (kit/db.py AsyncpgReader, issue 9).
    read_pool_size: Annotated[int, Field(ge=1)] = 8
    sqlite_busy_timeout_ms: Annotated[int, Field(ge=0)] = 30_000
    echo: bool = False


class RedisSettings(BaseModel):
    socket_timeout_s: Annotated[float, Field(gt=0)] = 0.5
    # When Redis is unreachable each process enforces calls_per_minute / this divisor on its
    # own: reduced, never unlimited. Set it to the number of API replicas.
    fallback_divisor: Annotated[int, Field(ge=1)] = 4


class WorkerSettings(BaseModel):
    concurrency: Annotated[int, Field(ge=1)] = 4
    lease_seconds: Annotated[float, Field(gt=0)] = 30.0
    heartbeat_seconds: Annotated[float, Field(gt=0)] = 10.0
    poll_interval_seconds: Annotated[float, Field(gt=0)] = 1.0
    max_attempts: Annotated[int, Field(ge=1)] = 3
    retry_backoff_seconds: Annotated[float, Field(ge=0)] = 5.0
    shutdown_grace_seconds: Annotated[float, Field(ge=0)] = 20.0
    render_processes: Annotated[int, Field(ge=0)] = 0  # 0: one per CPU core
    # A route that fails retriably is tried this many times before the next mirror.
    route_attempts: Annotated[int, Field(ge=1)] = 3
    route_retry_backoff_seconds: Annotated[float, Field(ge=0)] = 0.5


class ProviderSettings(BaseModel):
    api_key: str | None = None
    base_url: str | None = None
    # Per-request timeout; unset keeps the adapter's default (long for synchronous APIs).
    timeout_seconds: Annotated[float, Field(gt=0)] | None = None
    max_concurrency: Annotated[int, Field(ge=1)] = 8  # requests in flight per process
    # Retries of one HTTP call (see providers.http for which calls may be retried).
    retries: Annotated[int, Field(ge=0, le=10)] = 3
    retry_backoff_seconds: Annotated[float, Field(ge=0)] = 0.5  # first wait, then doubling
    max_retry_after_seconds: Annotated[float, Field(ge=0)] = 30.0  # cap on a Retry-After
    # Replicate: hold the create up to N s (`Prefer: wait=N`, 1-60) for a synchronous answer.
    prefer_wait_seconds: Annotated[int, Field(ge=1, le=60)] | None = None


class FetchSettings(BaseModel):
    """Fetching client-supplied reference image URLs (SSRF-guarded)."""

    allow_private_hosts: list[str] = Field(default_factory=list)  # trusted internal hosts
    max_bytes: Annotated[int, Field(ge=1024)] = 20 * 1024 * 1024
    timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    resolve_timeout_seconds: Annotated[float, Field(gt=0)] = 5.0


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration_list(value: object) -> list[float]:
    """`5s,5m,30m,2h` (or a list) → seconds; a plain number means seconds."""
    if isinstance(value, (int, float)):
        items: list[object] = [value]
    elif isinstance(value, str):
        items = [part for part in (p.strip() for p in value.split(",")) if part]
    elif isinstance(value, list):
        items = list(value)
    else:
        raise ValueError("must be a comma-separated list of delays like 5s,5m,2h")
    delays = []
    for item in items:
        text = str(item).strip().lower()
        unit = _DURATION_UNITS.get(text[-1:]) if text else None
        number = text[:-1] if unit else text
        try:
            seconds = float(number) * (unit or 1)
        except ValueError:
            raise ValueError(f"{item!r} is not a delay like 30, 5s, 5m, 2h or 1d") from None
        if not 0 <= seconds <= 30 * 86400 or seconds != seconds:
            raise ValueError(f"{item!r} must be between 0 and 30 days")
        delays.append(seconds)
    return delays


class WebhookSettings(BaseModel):
    """Webhook delivery (API.md §5.1)."""

    # Delays after each failed attempt; then the delivery is `failed` (~27.6 h by default).
    retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: parse_duration_list("5s,5m,30m,2h,5h,10h,10h")
    )
    timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 15.0
    # http:// and private/loopback targets: for development and tests only.
    allow_insecure_targets: bool = False
    # Deliveries sent at once by each worker process.
    concurrency: Annotated[int, Field(ge=1, le=256)] = 16
    # An endpoint whose every delivery failed for this long is disabled.
    disable_after_failing_days: Annotated[float, Field(gt=0)] = 5.0

    @field_validator("retry_schedule", mode="before")
    @classmethod
    def _parse_schedule(cls, value: object) -> list[float]:
        return parse_duration_list(value)


class EventSettings(BaseModel):
    """Event streams (API.md §5.2)."""

    # A `: ping` comment this often keeps proxies from closing an idle stream.
    ping_seconds: Annotated[float, Field(gt=0, le=15)] = 15.0
    # While streams are open, new events are also looked for this often (several
    # processes sharing one SQLite file have no notifications; on PostgreSQL a safety net).
    poll_interval_seconds: Annotated[float, Field(gt=0)] = 1.0
    # PostgreSQL: how long a missing event id (a transaction still committing) holds back
    # the ones after it before it is taken as rolled back.
    gap_wait_seconds: Annotated[float, Field(gt=0)] = 1.0
    # Changes are kept this long for streams resuming with Last-Event-ID (workers delete
    # older ones every `retention.sweep_interval_seconds`).
    keep_hours: Annotated[float, Field(gt=0)] = 24.0


class CircuitSettings(BaseModel):
    failure_threshold: Annotated[int, Field(ge=1)] = 5
    cooldown_seconds: Annotated[float, Field(gt=0)] = 30.0


class StudioSettings(BaseModel):
    """The browser Studio (STUDIO.md)."""

    # closed: operators create users; open: anyone may sign up (a new free account each).
    signup: Literal["closed", "open"] = "closed"
    session_days: Annotated[int, Field(ge=1)] = 30  # absolute lifetime of a sign-in
    idle_days: Annotated[int, Field(ge=1)] = 7  # unused this long: signed out
    # Studio submits per user per minute (the API's per-minute limit does not apply).
    generations_per_minute: Annotated[int, Field(ge=1)] = 30
    # Failed sign-ins allowed per window before 429, per email and per client address.
    signin_failures_per_email: Annotated[int, Field(ge=1)] = 10
    signin_failures_per_address: Annotated[int, Field(ge=1)] = 50
    signin_window_minutes: Annotated[int, Field(ge=1)] = 15


class RetentionSettings(BaseModel):
    """How long outputs and generation records are kept; None keeps them forever (API.md:
    output URLs stay valid for the configured retention, default forever)."""

    outputs_days: Annotated[int, Field(ge=1)] | None = None
    generations_days: Annotated[int, Field(ge=1)] | None = None
    # How often each worker looks for expired rows, and how many it handles per pass.
    sweep_interval_seconds: Annotated[float, Field(gt=0)] = 600.0
    batch_size: Annotated[int, Field(ge=1, le=10_000)] = 200


class AdminSettings(BaseModel):
    # Wrong admin tokens allowed per client address per minute before 429s.
    failed_attempts_per_minute: Annotated[int, Field(ge=1)] = 10


ADMIN_TOKEN_MIN_LENGTH = 32


class LogFormat(StrEnum):
    CONSOLE = "console"
    JSON = "json"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VIVIX_",
        env_nested_delimiter="__",
        extra="ignore",
        case_sensitive=False,
    )

    data_dir: Path = Path("./.vivix")
    database_url: str | None = None
    redis_url: str | None = None
    storage_url: str | None = None
    # Base of output URLs when the store is served directly (a public bucket or a CDN; include
    # the bucket prefix): `<storage_public_url>/<key>`. Unset: `<public_url>/files/<key>`.
    storage_public_url: str | None = None
    public_url: str | None = None
    admin_token: str | None = None
    catalog_path: Path | None = None
    # Keys are stored as HMAC(secret, key). Unset: a random secret is created in the data
    # dir on first start and reused after (every replica must share it).
    secret_key: str | None = None
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    log_level: str = "info"
    # `json` for a log collector (one object per line); `console` for people.
    log_format: LogFormat = LogFormat.CONSOLE
    # `vivix worker`: serve Prometheus metrics on this port (unset: none). The API serves
    # them at /metrics.
    metrics_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    # OpenTelemetry traces over OTLP/HTTP to this collector (e.g. http://collector:4318;
    # spans go to <it>/v1/traces). Unset: no tracing, and nothing of OpenTelemetry loaded.
    otel_endpoint: str | None = None
    max_body_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024
    idempotency_window_hours: Annotated[int, Field(ge=1)] = 24

    db: DatabaseSettings = DatabaseSettings()
    redis: RedisSettings = RedisSettings()
    worker: WorkerSettings = WorkerSettings()
    circuit: CircuitSettings = CircuitSettings()
    fetch: FetchSettings = FetchSettings()
    webhooks: WebhookSettings = WebhookSettings()
    events: EventSettings = EventSettings()
    studio: StudioSettings = StudioSettings()

    retention: RetentionSettings = RetentionSettings()
    admin: AdminSettings = AdminSettings()
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    tiers: dict[Tier, TierDefaults] = Field(default_factory=_default_tiers)

    @field_validator("providers", mode="before")
    @classmethod
    def _lowercase_provider_names(cls, value: object) -> object:
        if isinstance(value, dict):
            return {str(k).lower(): v for k, v in value.items()}
        return value

    @field_validator("tiers", mode="before")
    @classmethod
    def _merge_tier_overrides(cls, value: object) -> object:
        # VIVIX_TIERS__PRO__CALLS_PER_MINUTE=300 overrides one field, keeping the rest.
        if not isinstance(value, dict):
            return value
        merged = {t.value: d.model_dump() for t, d in _default_tiers().items()}
        for name, fields in value.items():
            key = str(name).lower()
            if key not in merged:
                raise ValueError(f"unknown tier {name!r}; tiers are {', '.join(merged)}")
            if isinstance(fields, TierDefaults):
                fields = fields.model_dump()
            merged[key] = {**merged[key], **dict(fields)}
        return merged

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            value = "postgresql+asyncpg://" + value.split("://", 1)[1]
        if value.startswith("sqlite://"):
            value = "sqlite+aiosqlite://" + value.split("://", 1)[1]
        if not (
            value.startswith("postgresql+asyncpg://") or value.startswith("sqlite+aiosqlite://")
        ):
            raise ValueError("must be a postgresql:// or sqlite:// URL")
        return value

    @field_validator("admin_token")
    @classmethod
    def _check_admin_token(cls, value: str | None) -> str | None:
        # The admin API moves money: a guessable token is refused at start, not in use.
        if value is None or value == "":
            return None
        if len(value) < ADMIN_TOKEN_MIN_LENGTH:
            raise ValueError(
                f"must be at least {ADMIN_TOKEN_MIN_LENGTH} characters (it is {len(value)}); "
                "generate one with `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        return value

    @field_validator("otel_endpoint")
    @classmethod
    def _check_otel_endpoint(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(
                "must be an OTLP/HTTP collector URL starting with http:// or https:// "
                "(e.g. http://otel-collector:4318)"
            )
        return value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        # A field validator (not a model one) so the error names VIVIX_PUBLIC_URL.
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'vivix.db').resolve()}"

    @property
    def resolved_storage_url(self) -> str:
        if self.storage_url:
            return self.storage_url
        return (self.data_dir / "outputs").resolve().as_uri()

    @property
    def resolved_public_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{self.host}:{self.port}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    def provider(self, name: str) -> ProviderSettings:
        return self.providers.get(name.lower(), ProviderSettings())


class SettingsError(Exception):
    """Settings could not be loaded; the message names each bad variable."""


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = "__".join(str(p).upper() for p in err["loc"]) or "settings"
            lines.append(f"  VIVIX_{loc}: {err['msg']}")
        raise SettingsError("invalid settings:\n" + "\n".join(lines)) from exc
