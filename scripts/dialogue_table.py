#!/usr/bin/env python3
"""The dialogue checks across seeds, from the runs of `textgen compare --budget ... --seeds N`.

`textgen compare` tests the leads of the generation rows (BLEU, chrF, ...). What dialogue needs
first is likelihood: the references' bits per byte with the true history, and how much worse they
get with another conversation's history (the input-use gap). `textgen evaluate` keeps each test
reference's NLL under both in predictions.jsonl; this script reads them for every seed of each arm
at each budget and prints one markdown table per budget:

* bits per byte and the input-use gap, mean ± sd over seeds, and the two-level bootstrap interval
  (seeds, then test examples) of the gap and of the first arm minus the second;
* distinct outputs, distinct-2, repeated 4-grams, chrF and the retrieval baseline's chrF, from eval.json.

Usage::

    python scripts/dialogue_table.py --arm sora-chat --arm chatgpt-chat [--runs runs] [--plot gap.png]

With --plot, the references' bits per byte and the input-use gap (with its two-level interval) are
also drawn against training FLOPs (each budget's stage summary), one line per arm.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from textgen_cli.metrics import two_level_bits_per_byte

Scores = tuple[list[float], list[int]]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def seed_folders(runs: Path, arm: str) -> list[Path]:
    """The seeds' run folders of one arm: <arm>-seed<k> (compare --seeds N > 1), or <arm> alone."""
    folders = sorted(runs.glob(f"{arm}-seed*"), key=lambda p: int(p.name.rsplit("seed", 1)[1]))
    return folders or [runs / arm]


def reference_scores(rows: list[dict], key: str) -> Scores:
    """The NLLs of every scored reference under `key` (own or shuffled history) and its bytes."""
    scored = [r for r in rows if key in r]
    if not scored:
        raise SystemExit("predictions.jsonl holds no reference NLLs: evaluate with eval.input_check > 0")
    return [r[key] for r in scored], [r["reference_bytes"] for r in scored]


def mean_sd(values: Sequence[float], digits: int = 3) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def interval(result: dict, digits: int = 3) -> str:
    d = result["diff"]
    return f"{d['score']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"


def arm_rows(folders: list[Path], budget: str) -> dict:
    evals, own, shuffled = [], [], []
    for folder in folders:
        where = folder / "budgets" / budget
        evals.append(json.loads((where / "eval.json").read_text(encoding="utf-8")))
        rows = read_jsonl(where / "predictions.jsonl")
        own.append(reference_scores(rows, "reference_nll"))
        shuffled.append(reference_scores(rows, "reference_nll_shuffled"))
    return {"evals": evals, "own": own, "shuffled": shuffled}


def gap_bootstrap(rows: dict, n_resamples: int) -> dict:
    """The input-use gap (shuffled minus own history, bits per byte) with the two-level interval.

    The two histories are scored by the same model, so a replicate must draw the same seeds for
    both: each seed's per-example statistic is the NLL difference (shuffled - own) over the bytes,
    bootstrapped against a zero arm. (Passing the shuffled and the own scores as two arms would draw
    their seeds independently and widen the interval by the seeds' spread in bits per byte.)"""
    paired = [
        ([s - o for s, o in zip(shuffled, own)], n_bytes)
        for (shuffled, n_bytes), (own, _) in zip(rows["shuffled"], rows["own"])
    ]
    zero = [([0.0] * len(n_bytes), n_bytes) for _, n_bytes in paired]
    return two_level_bits_per_byte(paired, zero, n_resamples)


def budget_table(arms: dict[str, dict], n_resamples: int) -> list[str]:
    head = ["row", *[f"`{a}` (mean ± sd; {seeds(len(r['evals']))})" for a, r in arms.items()]]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]

    def row(label: str, cells: list[str]) -> None:
        lines.append("| " + " | ".join([label, *cells]) + " |")

    bpb = {a: [e["input_use"]["bits_per_byte_true"] for e in r["evals"]] for a, r in arms.items()}
    row("reference bits per byte, own history", [mean_sd(bpb[a]) for a in arms])
    row(
        "reference bits per byte, shuffled history",
        [mean_sd([e["input_use"]["bits_per_byte_shuffled"] for e in r["evals"]]) for r in arms.values()],
    )
    row(
        "input-use gap [95%, seeds then examples]",
        [interval(gap_bootstrap(r, n_resamples), 4) for r in arms.values()],
    )
    row(
        "distinct outputs / distinct histories",
        [mean_sd([e["degeneration"]["distinct_outputs_share"] for e in r["evals"]]) for r in arms.values()],
    )
    row("distinct-2", [mean_sd([e["metrics"]["distinct_2"] for e in r["evals"]]) for r in arms.values()])
    row(
        "repeated 4-gram rate (references)",
        [
            mean_sd([e["degeneration"]["repeated_4gram_rate"] for e in r["evals"]])
            + f" ({r['evals'][0]['degeneration']['reference_repeated_4gram_rate']:.3f})"
            for r in arms.values()
        ],
    )
    for metric in ("chrf", "bleu"):
        row(f"{metric} (secondary)", [mean_sd([e["metrics"][metric] for e in r["evals"]], 2) for r in arms.values()])
        row(
            f"{metric}, retrieval baseline",
            [f"{retrieval(r['evals'][0], metric):.2f}" for r in arms.values()],
        )
        row(
            f"{metric}, model - retrieval [95%], per seed",
            [", ".join(versus_retrieval(e, metric) for e in r["evals"]) for r in arms.values()],
        )
    names = list(arms)
    if len(names) >= 2:
        first, second = arms[names[0]], arms[names[1]]
        diff = two_level_bits_per_byte(first["own"], second["own"], n_resamples)
        lines += [
            "",
            f"`{names[0]}` - `{names[1]}`, reference bits per byte (lower is better): {interval(diff)} "
            f"(95%, two-level bootstrap: seeds, then the {len(first['own'][0][0])} test examples)",
        ]
    return lines


def seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def retrieval(report: dict, metric: str) -> float:
    return next(b["metrics"][metric] for b in report["baselines"] if b["key"] == "retrieval")


def versus_retrieval(report: dict, metric: str) -> str:
    v = next(b["versus"][metric] for b in report["baselines"] if b["key"] == "retrieval")
    return f"{v['diff']:+.2f} [{v['low']:+.2f}, {v['high']:+.2f}]"


def plot(folders: dict[str, list[Path]], budgets: list[str], path: Path, n_resamples: int) -> None:
    """Bits per byte (own history) and the input-use gap [95%] against training FLOPs, per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for arm, fs in folders.items():
        xs, bpb, gap, low, high = [], [], [], [], []
        for budget in budgets:
            if not all((f / "budgets" / budget / "eval.json").is_file() for f in fs):
                continue
            rows = arm_rows(fs, budget)
            flops = [
                json.loads((f / "budgets" / budget / "summary.json").read_text(encoding="utf-8"))["flops"] for f in fs
            ]
            xs.append(statistics.mean(flops))
            bpb.append(statistics.mean(e["input_use"]["bits_per_byte_true"] for e in rows["evals"]))
            d = gap_bootstrap(rows, n_resamples)["diff"]
            gap.append(d["score"])
            low.append(d["score"] - d["low"])
            high.append(d["high"] - d["score"])
        label = f"{arm} ({seeds(len(fs))})"
        left.plot(xs, bpb, marker="o", label=label)
        right.errorbar(xs, gap, yerr=[low, high], marker="o", capsize=3, label=label)
    left.set(xscale="log", xlabel="training FLOPs", ylabel="bits per byte (test replies, own history)")
    right.axhline(0.0, color="grey", linewidth=0.8)
    right.set(xscale="log", xlabel="training FLOPs", ylabel="input-use gap, bits per byte [95%]")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arm", action="append", required=True, help="a recipe's run name (repeat)")
    parser.add_argument("--runs", default="runs", help="the folder that holds the runs")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--plot", help="also draw bits per byte and the input-use gap against FLOPs to this file")
    args = parser.parse_args(argv)
    folders = {arm: seed_folders(Path(args.runs), arm) for arm in args.arm}
    budgets = sorted(
        {p.name for fs in folders.values() for f in fs for p in (f / "budgets").glob("*")},
        key=lambda name: float(name.split("-", 1)[1]),
    )
    if not budgets:
        print(f"no budgets/ folders under {args.runs} for {', '.join(args.arm)}", file=sys.stderr)
        return 2
    complete = [
        b for b in budgets if all((f / "budgets" / b / "eval.json").is_file() for fs in folders.values() for f in fs)
    ]
    for budget in sorted(set(budgets) - set(complete)):
        print(f"{budget}: not every arm and seed is evaluated yet; left out", file=sys.stderr)
    budgets = complete
    for budget in budgets:
        arms = {arm: arm_rows(fs, budget) for arm, fs in folders.items()}
        print(f"\n### {budget}\n")
        print("\n".join(budget_table(arms, args.resamples)))
    if args.plot:
        plot(folders, budgets, Path(args.plot), args.resamples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
