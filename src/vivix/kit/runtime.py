"""What the app and workers share at run time; built in the lifespan, never at import."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from vivix.catalog.service import Catalog
from vivix.kit.db import Database
from vivix.limits.service import RateLimiter
from vivix.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    db: Database
    catalog: Catalog
    limiter: RateLimiter
    secret: str
    # Called after a generation's transaction commits, to wake workers.
    on_enqueued: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def notify_enqueued(self) -> None:
        for callback in self.on_enqueued:
            await callback()


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
        catalog=Catalog.load(settings.catalog_path),
        limiter=RateLimiter(
            settings.redis_url,
            fallback_divisor=settings.redis.fallback_divisor,
            socket_timeout_s=settings.redis.socket_timeout_s,
        ),
        secret=load_or_create_secret(settings),
    )


async def close_runtime(runtime: Runtime) -> None:
    await runtime.limiter.close()
    await runtime.db.dispose()
