"""The composition root: what the app, the CLI and workers share at run time, built in the
lifespan (or the command), never at import. Choices made once per process live here: the
database dialect picks the ledger and the cross-process notifier."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vivix.billing.ledger import Ledger, open_ledger
from vivix.catalog.service import Catalog
from vivix.events.hub import EventHub
from vivix.generations.eta import RunTimes
from vivix.kit.db import Database
from vivix.kit.egress import Resolver
from vivix.kit.logging import configure_logging
from vivix.kit.wakeup import EVENTS_CHANNEL, JobsNotifier
from vivix.limits.service import RateLimiter
from vivix.providers.circuits import CircuitBreakers
from vivix.settings import Settings
from vivix.storage.service import OutputStore

if TYPE_CHECKING:
    from vivix.models import WebhookDelivery, WebhookEndpoint
    from vivix.webhooks.sender import WebhookSender


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
    # This process's event streams (started by the first one).
    events: EventHub
    # In-process signals, called after the transaction commits (embedded worker); other
    # processes learn through PostgreSQL NOTIFY (see vivix.kit.wakeup) or polling.
    on_enqueued: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_canceled: list[Callable[[str], None]] = field(default_factory=list)
    # This process's webhook senders (other processes hear the NOTIFY sent in the
    # transaction that queued the deliveries).
    on_webhooks_queued: list[Callable[[], None]] = field(default_factory=list)
    # This process's running sender: deliveries its worker queues are leased to it in the
    # queueing transaction and sent right after the commit, without a claim.
    webhook_sender: WebhookSender | None = None
    # DNS for client-supplied URLs; None = the system resolver.
    resolver: Resolver | None = None
    # Other processes' workers (PostgreSQL only).
    jobs_notifier: JobsNotifier | None = None
    # Other processes' event streams (PostgreSQL only).
    events_notifier: JobsNotifier | None = None
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

    def notify_webhooks_queued(
        self, leased: Sequence[tuple[WebhookDelivery, WebhookEndpoint]] = ()
    ) -> None:
        """After deliveries commit: send those leased to this process's sender, wake it."""
        if leased and self.webhook_sender is not None:
            self.webhook_sender.send_leased(leased)
            return
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
        read_pool_size=settings.db.read_pool_size,
    )
    events = EventHub(
        db,
        poll_interval_s=settings.events.poll_interval_seconds,
        gap_wait_s=settings.events.gap_wait_seconds,
        listen_url=None if db.is_sqlite else settings.resolved_database_url,
    )
    db.on_events_committed.append(events.wake)
    events_notifier = None if db.is_sqlite else JobsNotifier(db, EVENTS_CHANNEL)
    if events_notifier is not None:
        db.on_events_committed.append(events_notifier.poke)
    return Runtime(
        settings=settings,
        db=db,
        ledger=open_ledger(db),
        events=events,
        events_notifier=events_notifier,
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
    await runtime.events.close()
    for notifier in (runtime.jobs_notifier, runtime.events_notifier):
        if notifier is not None:
            await notifier.close()
    await runtime.limiter.close()
    await runtime.db.dispose()
