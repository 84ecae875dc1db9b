"""Operator settings (API.md §7): VIVIX_ environment variables with `__` for nesting,
validated at start-up with an error that names each bad variable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vivix.settings import SettingsError, Tier, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the variables a test sets (the test runner's own VIVIX_TEST_* are ignored
    anyway, but a developer's shell may export real ones)."""
    for name in list(os.environ):
        if name.upper().startswith("VIVIX_"):
            monkeypatch.delenv(name)


def settings_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    return str(caught.value)


def test_defaults_need_no_environment() -> None:
    settings = load_settings()
    assert settings.data_dir == Path(".vivix")
    assert settings.database_url is None
    assert settings.resolved_database_url == (
        f"sqlite+aiosqlite:///{(Path('.vivix') / 'vivix.db').resolve()}"
    )
    assert settings.is_sqlite
    assert settings.redis_url is None
    assert settings.admin_token is None
    assert settings.catalog_path is None
    assert settings.resolved_storage_url == (Path(".vivix") / "outputs").resolve().as_uri()
    assert settings.resolved_public_url == "http://127.0.0.1:8000"
    assert settings.max_body_bytes == 64 * 1024
    assert settings.providers == {}
    assert settings.provider("fal").api_key is None


def test_default_tiers_are_as_documented() -> None:
    tiers = load_settings().tiers
    assert (tiers[Tier.PRO].calls_per_minute, tiers[Tier.PRO].concurrent_jobs) == (240, 5)
    assert tiers[Tier.PRO].monthly_credits == 15000
    assert (tiers[Tier.ULTIMATE].calls_per_minute, tiers[Tier.ULTIMATE].concurrent_jobs) == (
        600,
        20,
    )
    assert tiers[Tier.ULTIMATE].monthly_credits == 60000
    assert [t for t, d in tiers.items() if d.api_access] == [Tier.PRO, Tier.ULTIMATE]


def test_top_level_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VIVIX_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("VIVIX_ADMIN_TOKEN", "t0ken-t0ken-t0ken-t0ken-t0ken-t0ken")
    monkeypatch.setenv("VIVIX_PUBLIC_URL", "https://media.example.com/")
    monkeypatch.setenv("VIVIX_REDIS_URL", "redis://cache:6379/1")
    monkeypatch.setenv("VIVIX_PORT", "9000")
    settings = load_settings()
    assert settings.data_dir == tmp_path
    assert settings.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path / 'vivix.db'}"
    assert settings.resolved_storage_url == (tmp_path / "outputs").as_uri()
    assert settings.admin_token == "t0ken-t0ken-t0ken-t0ken-t0ken-t0ken"
    assert settings.resolved_public_url == "https://media.example.com"
    assert settings.redis_url == "redis://cache:6379/1"
    assert settings.port == 9000


@pytest.mark.parametrize(
    ("given", "resolved"),
    [
        ("postgresql://vivix@db:5432/vivix", "postgresql+asyncpg://vivix@db:5432/vivix"),
        ("postgres://vivix@db/vivix", "postgresql+asyncpg://vivix@db/vivix"),
        ("postgresql+asyncpg://vivix@db/vivix", "postgresql+asyncpg://vivix@db/vivix"),
        ("sqlite:////var/lib/vivix.db", "sqlite+aiosqlite:////var/lib/vivix.db"),
    ],
)
def test_database_urls_are_normalised_to_the_async_drivers(
    monkeypatch: pytest.MonkeyPatch, given: str, resolved: str
) -> None:
    monkeypatch.setenv("VIVIX_DATABASE_URL", given)
    settings = load_settings()
    assert settings.resolved_database_url == resolved
    assert settings.is_sqlite == resolved.startswith("sqlite")


def test_provider_credentials_nest_under_their_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIVIX_PROVIDERS__FAL__API_KEY", "fal-secret")
    monkeypatch.setenv("VIVIX_PROVIDERS__FAL__BASE_URL", "http://fal-proxy:8080")
    monkeypatch.setenv("VIVIX_PROVIDERS__REPLICATE__API_KEY", "r8-secret")
    monkeypatch.setenv("VIVIX_PROVIDERS__COMFYUI__BASE_URL", "http://gpu-box:8188")
    settings = load_settings()
    assert settings.provider("fal").api_key == "fal-secret"
    assert settings.provider("FAL").base_url == "http://fal-proxy:8080"
    assert settings.provider("replicate").api_key == "r8-secret"
    assert settings.provider("replicate").base_url is None
    assert settings.provider("comfyui").base_url == "http://gpu-box:8188"
    assert settings.provider("xai").api_key is None


def test_one_tier_field_overrides_only_that_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIVIX_TIERS__PRO__CALLS_PER_MINUTE", "300")
    monkeypatch.setenv("VIVIX_TIERS__STANDARD__API_ACCESS", "true")
    tiers = load_settings().tiers
    pro = tiers[Tier.PRO]
    assert pro.calls_per_minute == 300
    assert (pro.concurrent_jobs, pro.monthly_credits, pro.api_access) == (5, 15000, True)
    assert tiers[Tier.STANDARD].api_access is True
    assert tiers[Tier.STANDARD].calls_per_minute == 60
    assert tiers[Tier.ULTIMATE].calls_per_minute == 600
    assert tiers[Tier.FREE].api_access is False


def test_worker_section_overrides_keep_the_other_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = load_settings().worker
    monkeypatch.setenv("VIVIX_WORKER__CONCURRENCY", "8")
    monkeypatch.setenv("VIVIX_DB__POOL_SIZE", "3")
    settings = load_settings()
    assert settings.worker.concurrency == 8
    assert settings.worker.lease_seconds == defaults.lease_seconds
    assert settings.worker.max_attempts == defaults.max_attempts
    assert settings.db.pool_size == 3


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("VIVIX_WORKER__CONCURRENCY", "many"),
        ("VIVIX_WORKER__CONCURRENCY", "0"),
        ("VIVIX_WORKER__LEASE_SECONDS", "-1"),
        ("VIVIX_PORT", "0"),
        ("VIVIX_PORT", "70000"),
        ("VIVIX_DATABASE_URL", "mysql://db/vivix"),
        ("VIVIX_PUBLIC_URL", "ftp://media.example.com"),
        ("VIVIX_TIERS__PRO__CALLS_PER_MINUTE", "0"),
        ("VIVIX_TIERS__ULTIMATE__MONTHLY_CREDITS", "-5"),
        ("VIVIX_MAX_BODY_BYTES", "10"),
        ("VIVIX_REDIS__SOCKET_TIMEOUT_S", "0"),
        ("VIVIX_DB__POOL_SIZE", "zero"),
    ],
)
def test_bad_value_is_an_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    message = settings_error(monkeypatch, **{variable: value})
    assert f"{variable}:" in message
    assert message.startswith("invalid settings")


def test_unknown_tier_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    message = settings_error(monkeypatch, VIVIX_TIERS__GOLD__CALLS_PER_MINUTE="5")
    assert "VIVIX_TIERS:" in message
    assert "gold" in message
    assert "pro" in message  # lists the tiers that exist


def test_every_bad_variable_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    message = settings_error(
        monkeypatch, VIVIX_PORT="-1", VIVIX_WORKER__CONCURRENCY="x", VIVIX_PUBLIC_URL="nope"
    )
    for variable in ("VIVIX_PORT", "VIVIX_WORKER__CONCURRENCY", "VIVIX_PUBLIC_URL"):
        assert f"{variable}:" in message
