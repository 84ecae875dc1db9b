"""`python -m tests.chaos`: run the chaos harness against the local PostgreSQL + Redis."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from tests.chaos.harness import ChaosConfig, ChaosRun


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-seconds", type=float, default=6.0)
    parser.add_argument("--rate", type=float, default=4.0, help="logical submits a second")
    parser.add_argument("--job-seconds", type=float, default=2.0)
    parser.add_argument("--cut-seconds", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "VIVIX_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument(
        "--redis", default=os.environ.get("VIVIX_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--workdir", type=Path, help="kept afterwards (logs); default: temporary")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vivix-chaos-") as scratch:
        config = ChaosConfig(
            postgres_url=args.postgres,
            redis_url=args.redis,
            workdir=args.workdir or Path(scratch),
            rounds=args.rounds,
            round_seconds=args.round_seconds,
            submits_per_second=args.rate,
            job_seconds=args.job_seconds,
            cut_seconds=args.cut_seconds,
            seed=args.seed,
        )
        report = ChaosRun(config).run()
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
