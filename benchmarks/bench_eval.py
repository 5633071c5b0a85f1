#!/usr/bin/env python3
"""Evaluation speed: `textgen evaluate` on the shipped test split for both default recipes
(needs their trained models: run `make demo` first), median of 3 runs: examples/s end to end and
the share spent generating.

    python benchmarks/bench_eval.py               # part of `make bench`

Writes benchmarks/results/eval.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEXTGEN = str(Path(sys.executable).parent / "textgen")


def main() -> None:
    results = {}
    for recipe in ("sora", "chatgpt"):
        if not (Path("runs") / recipe / "finetune" / "final").is_dir():
            sys.exit(f"runs/{recipe}/finetune/final is missing: run `make demo` first (from the folder holding runs/)")
        reports = []
        for _ in range(3):
            done = subprocess.run(
                [
                    TEXTGEN,
                    "evaluate",
                    "--recipe",
                    f"{recipe}.yaml",
                    "--json",
                    "--output",
                    f"/tmp/textgen-bench-eval-{recipe}",
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
                check=True,
            )
            reports.append(json.loads(done.stdout))
        seconds = statistics.median(r["eval_time_s"] for r in reports)
        generating = statistics.median(r["generation"]["seconds"] for r in reports)
        results[recipe] = {
            "examples": reports[0]["n_examples"],
            "eval_seconds": seconds,
            "examples_per_s": reports[0]["n_examples"] / seconds,
            "generation_seconds": generating,
            "generation_tokens_per_s": statistics.median(r["generation"]["tokens_per_s"] for r in reports),
        }
        row = results[recipe]
        print(
            f"{recipe:<8} {row['examples']} examples in {seconds:.1f} s ({row['examples_per_s']:.1f} examples/s), generating {generating:.1f} s "
            f"at {row['generation_tokens_per_s']:,.0f} tokens/s"
        )
    out = REPO / "benchmarks/results/eval.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
