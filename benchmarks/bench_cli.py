#!/usr/bin/env python3
"""Start-up: wall time of `textgen --help` and `textgen pretrain --help` (median of 10 runs), next
to the time Python needs just to import torch, which textgen's CLI never does for --help.

    python benchmarks/bench_cli.py        # part of `make bench`

Writes benchmarks/results/cli.json.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEXTGEN = str(Path(sys.executable).parent / "textgen")


def median_seconds(command: list[str], runs: int = 10) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    results = {
        "textgen --help": median_seconds([TEXTGEN, "--help"]),
        "textgen pretrain --help": median_seconds([TEXTGEN, "pretrain", "--help"]),
        "python -c 'import torch'": median_seconds([sys.executable, "-c", "import torch"], runs=5),
        "python -c 'import transformers'": median_seconds([sys.executable, "-c", "import transformers"], runs=3),
    }
    for name, seconds in results.items():
        print(f"{name:<34} {seconds:6.3f} s")
    out = REPO / "benchmarks/results/cli.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
