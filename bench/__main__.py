"""All benchmarks: `python -m bench [bench_api options]` (what `make bench` runs).

The API benchmark gets the command-line options. The modules in OTHER_BENCHMARKS run
afterwards, when present, each with its defaults in a process of its own, so none depends
on another's interface or memory.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from bench import bench_api

OTHER_BENCHMARKS = (
    "bench.bench_engine",
    "bench.bench_render",
    "bench.bench_cli",
    "bench.bench_studio",
    "bench.bench_webhooks",
    "bench.bench_sse",
)


def main(argv: list[str]) -> int:
    status = bench_api.main(argv)
    for module in OTHER_BENCHMARKS:
        if importlib.util.find_spec(module) is None:
            print(f"{module}: not present, skipped", file=sys.stderr)
            continue
        sys.stdout.flush()
        status = subprocess.call([sys.executable, "-m", module]) or status
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
