"""The journeys once more, against `vivix serve` on PostgreSQL + Redis (when
VIVIX_TEST_POSTGRES_URL / VIVIX_TEST_REDIS_URL are set, as CI=true sets them)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy.engine import make_url

import tests.browser.test_journeys as journeys
from tests.browser.conftest import Studio, browsing, studio_server, studio_server_env
from tests.conftest import (
    IN_CI,
    POSTGRES_URL,
    REDIS_URL,
    _asyncpg_url,
    _create_pg_database,
    _drop_pg_database,
)
from vivix.migrations import upgrade_to_head


def _run(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run in a thread of its own: Playwright's sync API keeps an event loop on this one."""
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, coroutine).result()


@pytest.fixture(scope="module")
def pg_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Studio]:
    if not POSTGRES_URL or not REDIS_URL:
        if IN_CI:
            pytest.fail("CI=true needs VIVIX_TEST_POSTGRES_URL and VIVIX_TEST_REDIS_URL")
        pytest.skip("set VIVIX_TEST_POSTGRES_URL and VIVIX_TEST_REDIS_URL for PostgreSQL")
    admin_url = _asyncpg_url(POSTGRES_URL)
    name = f"vivix_browser_{uuid.uuid4().hex[:12]}"
    _run(_create_pg_database(admin_url, name))
    try:
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        _run(upgrade_to_head(url))  # `vivix serve` migrates only SQLite by itself
        home = tmp_path_factory.mktemp("browser-pg")
        env = studio_server_env(home, DATABASE_URL=url, REDIS_URL=REDIS_URL)
        with studio_server(env, home) as server:
            yield server
    finally:
        _run(_drop_pg_database(admin_url, name))


def test_the_journeys_on_postgresql(chromium: Any, pg_studio: Studio) -> None:
    # The ones that move money, query history or send webhooks; each one signs in.
    for journey in (
        journeys.test_a_free_user_generates_and_the_result_and_charge_appear_without_a_reload,
        journeys.test_a_pro_user_creates_a_key_uses_it_sees_only_its_prefix_and_revokes_it,
        journeys.test_history_filters_live_in_the_url_and_a_run_can_be_run_again,
        journeys.test_the_usage_csv_download_adds_up_to_the_ledger,
        journeys.test_an_operator_grants_credits_and_changes_a_tier_from_the_account_page,
        journeys.test_a_webhook_added_in_settings_receives_a_signed_test_event,
    ):
        with browsing(chromium, pg_studio) as pages:
            journey(pages, pg_studio)
