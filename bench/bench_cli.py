"""`vivix --help` start-up time: the operator CLI must answer at once (issue: under 0.5 s).

Prints the median wall time of `vivix --help` over N runs, next to the same interpreter
starting and exiting (`python -c pass`) and importing typer alone, measured in the same run,
so the figure reads as "our cost above a bare start".

    .venv/bin/python -m bench.bench_cli [--runs 15] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _median_seconds(command: list[str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    vivix = shutil.which("vivix", path=str(Path(sys.executable).parent)) or "vivix"
    figures = {
        "python -c pass": _median_seconds([sys.executable, "-c", "pass"], args.runs),
        "python -c 'import typer'": _median_seconds(
            [sys.executable, "-c", "import typer"], args.runs
        ),
        "vivix --help": _median_seconds([vivix, "--help"], args.runs),
        "vivix keys --help": _median_seconds([vivix, "keys", "--help"], args.runs),
    }
    if args.json:
        print(json.dumps({name: round(s, 4) for name, s in figures.items()}))
        return 0
    bare = figures["python -c pass"]
    print(f"CLI start-up, median of {args.runs} runs")
    for name, seconds in figures.items():
        print(
            f"  {name:<28} {seconds * 1000:7.1f} ms   (+{(seconds - bare) * 1000:6.1f} ms over bare)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
