"""The composition root: what the app, the CLI and workers share at run time, built in the
lifespan (or the command), never at import. Choices made once per process live here: the
database dialect picks the ledger and the cross-process notifier."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from vivix.billing.ledger import Ledger, open_ledger
from vivix.catalog.service import Catalog
from vivix.generations.eta import RunTimes
from vivix.kit.db import Database
from vivix.kit.egress import Resolver
from vivix.kit.logging import configure_logging
from vivix.kit.wakeup import JobsNotifier
from vivix.limits.service import RateLimiter
from vivix.providers.circuits import CircuitBreakers
from vivix.settings import Settings
from vivix.storage.service import OutputStore


@dataclass
class Runtime:
    settings: Settings
    db: Database
    ledger: Ledger
    catalog: Catalog
    limiter: RateLimiter
    secret: str
    storage: OutputStore
    circuits: CircuitBreakers
    # In-process signals, called after the transaction commits (embedded worker); other
    # processes learn through PostgreSQL NOTIFY (see vivix.kit.wakeup) or polling.
    on_enqueued: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_canceled: list[Callable[[str], None]] = field(default_factory=list)
    # This process's webhook senders (other processes hear the NOTIFY sent in the
    # transaction that queued the deliveries).
    on_webhooks_queued: list[Callable[[], None]] = field(default_factory=list)
    # DNS for client-supplied URLs; None = the system resolver.
    resolver: Resolver | None = None
    # Other processes' workers (PostgreSQL only).
    jobs_notifier: JobsNotifier | None = None
    # Recent run times behind `eta_ms` (generations.eta): a snapshot per process.
    run_times: RunTimes = field(default_factory=RunTimes)

    async def notify_enqueued(self) -> None:
        """After a submit commits: wake this process's worker and, on PostgreSQL, others."""
        for callback in self.on_enqueued:
            await callback()
        if self.jobs_notifier is not None:
            self.jobs_notifier.poke()

    def notify_canceled(self, generation_id: str) -> None:
        for callback in self.on_canceled:
            callback(generation_id)

    def notify_webhooks_queued(self) -> None:
        """After deliveries commit: wake this process's webhook sender."""
        for callback in self.on_webhooks_queued:
            callback()


def load_or_create_secret(settings: Settings) -> str:
    """The key-hashing secret: VIVIX_SECRET_KEY, else a random one kept in the data dir
    (created once, mode 0600). Replicas sharing a database must share this secret."""
    import os
    import secrets as random_secrets

    if settings.secret_key:
        return settings.secret_key
    path = settings.data_dir / "secret.key"
    if path.exists():
        return path.read_text("utf-8").strip()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    value = random_secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value)
    return value


async def build_runtime(settings: Settings) -> Runtime:
    secret = load_or_create_secret(settings)
    configure_logging(
        settings.log_level,
        log_format=settings.log_format.value,
        secrets=[
            secret,
            settings.admin_token,
            *(provider.api_key for provider in settings.providers.values()),
        ],
    )
    db = Database(
        settings.resolved_database_url,
        pool_size=settings.db.pool_size,
        max_overflow=settings.db.max_overflow,
        sqlite_busy_timeout_ms=settings.db.sqlite_busy_timeout_ms,
        echo=settings.db.echo,
    )
    return Runtime(
        settings=settings,
        db=db,
        ledger=open_ledger(db),
        jobs_notifier=None if db.is_sqlite else JobsNotifier(db),
        circuits=CircuitBreakers(db, settings.circuit),
        catalog=Catalog.load(settings.catalog_path),
        limiter=RateLimiter(
            settings.redis_url,
            fallback_divisor=settings.redis.fallback_divisor,
            socket_timeout_s=settings.redis.socket_timeout_s,
        ),
        secret=secret,
        storage=OutputStore.from_url(
            settings.resolved_storage_url,
            public_base_url=settings.resolved_public_url,
            storage_public_url=settings.storage_public_url,
        ),
    )


async def close_runtime(runtime: Runtime) -> None:
    if runtime.jobs_notifier is not None:
        await runtime.jobs_notifier.close()
    await runtime.limiter.close()
    await runtime.db.dispose()
