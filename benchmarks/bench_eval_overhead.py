#!/usr/bin/env python3
"""Evaluate's work beyond decoding, as a share of decoding alone, in one process (issue 25: at most
50% on SmolLM2-135M). Given a recipe and a model folder, it decodes the test prompts the way
`evaluate` does but scores nothing (plain decoding: the denominator), then runs the whole
`evaluate` (metrics, baselines, likelihood, input use, ...) on the same model, and reports

    beyond = evaluate's time, its model loading aside, minus the plain decoding time

so the figure holds no matter where evaluate books its work. Repeat it with `--repeats`: the two
are run alternately, and the medians are reported.

    python benchmarks/bench_eval_overhead.py --recipe R.yaml --model DIR [--repeats 2] [KEY=VALUE ...]

For example, SmolLM2 zero-shot on 100 verses (the recipe `make real-check` writes):

    OMP_NUM_THREADS=1 python benchmarks/bench_eval_overhead.py --recipe runs/real-check/smollm2.yaml \\
        --model ~/.cache/textgen/real-check/smollm2-plain eval.max_examples=100 generate.max_new_tokens=64
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from textgen_cli.evaluation.evaluate import run_evaluate, split_examples
    from textgen_cli.generation.generate import load_generator
    from textgen_cli.recipe import load_recipe

    loaded = load_recipe(args.recipe, args.overrides)
    generator = load_generator(None, args.model, loaded=loaded)
    examples = split_examples(loaded, "test")
    plain, beyond, shares = [], [], []
    for _ in range(args.repeats):
        began = time.perf_counter()
        generator.batch([e.prompt for e in examples])
        plain.append(time.perf_counter() - began)
        with tempfile.TemporaryDirectory() as out:
            report = run_evaluate(loaded, args.model, None, "test", [], output=out, progress=False)
        spent = report.eval_time_s - report.timings.get("load", 0.0)
        beyond.append(spent - plain[-1])
        shares.append(beyond[-1] / plain[-1])
        print(
            f"plain decoding {plain[-1]:.1f} s; evaluate {spent:.1f} s (load aside): beyond {beyond[-1]:.1f} s = "
            f"{100 * shares[-1]:.0f}% of decoding; its timings: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in report.timings.items()),
            flush=True,
        )
    print(
        json.dumps(
            {
                "examples": len(examples),
                "plain_decoding_s": statistics.median(plain),
                "beyond_decoding_s": statistics.median(beyond),
                "beyond_share": statistics.median(shares),
            }
        )
    )


if __name__ == "__main__":
    main()
