"""The chaos harness's short run (3 rounds) on PostgreSQL + Redis: processes killed with
SIGKILL, database and Redis connections cut, then drained and audited. The long run
(≥ 100 rounds) is `python -m tests.chaos --rounds 100`; its figures are in bench/README.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.harness import ChaosConfig, ChaosRun
from tests.conftest import IN_CI, POSTGRES_URL, REDIS_URL


def test_a_short_chaos_run_loses_nothing_and_pays_nothing_twice(tmp_path: Path) -> None:
    if not POSTGRES_URL or not REDIS_URL:
        if IN_CI:
            pytest.fail("CI=true needs VIVIX_TEST_POSTGRES_URL and VIVIX_TEST_REDIS_URL")
        pytest.skip("the chaos run needs VIVIX_TEST_POSTGRES_URL and VIVIX_TEST_REDIS_URL")
    config = ChaosConfig(
        postgres_url=POSTGRES_URL,
        redis_url=REDIS_URL,
        workdir=tmp_path,
        rounds=3,
        round_seconds=5.0,
        submits_per_second=3.0,
        job_seconds=1.5,
        cut_seconds=1.5,
    )
    report = ChaosRun(config).run()
    logs = "\n".join(
        f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
        for path in sorted((tmp_path / "logs").glob("*.log"))
    )
    summary = report.summary()
    assert report.rounds == 3, summary
    assert min(report.kills["worker"], report.kills["api"]) >= 1, summary
    assert min(report.cuts["database"], report.cuts["redis"]) >= 1, summary
    assert report.submits >= 10, summary
    assert report.generations == report.submits, summary
    assert report.lost == 0, f"{summary}\n{logs}"
    assert report.unanswered == 0, f"{summary}\n{logs}"
    assert report.audit_problems == [], summary
    assert report.credits_off == 0, summary
    assert report.submitted_twice == 0, f"{summary}\n{logs}"
    assert report.upstream_jobs == report.generations, summary
