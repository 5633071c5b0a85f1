"""scripts/dialogue_table.py: the dialogue checks across seeds, from per-example reference NLLs."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "dialogue_table.py"


def load_script():
    spec = importlib.util.spec_from_file_location("dialogue_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(folder: Path, own: list[float], shuffled: list[float], n_bytes: list[int]) -> None:
    """One seed's evaluation at one budget, as `textgen compare --budget` leaves it."""
    where = folder / "budgets" / "flops-1e+12"
    where.mkdir(parents=True)
    rows = [
        {
            "id": str(i),
            "prediction": f"reply {i}",
            "reference_nll": a,
            "reference_nll_shuffled": b,
            "reference_bytes": n,
        }
        for i, (a, b, n) in enumerate(zip(own, shuffled, n_bytes))
    ]
    (where / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    bpb = sum(own) / (math.log(2) * sum(n_bytes))
    versus = {"diff": -1.0, "low": -2.0, "high": 0.5}
    report = {
        "input_use": {
            "bits_per_byte_true": bpb,
            "bits_per_byte_shuffled": sum(shuffled) / (math.log(2) * sum(n_bytes)),
        },
        "degeneration": {
            "distinct_outputs_share": 1.0,
            "repeated_4gram_rate": 0.01,
            "reference_repeated_4gram_rate": 0.0,
        },
        "metrics": {"distinct_2": 0.5, "chrf": 12.0, "bleu": 1.0},
        "baselines": [
            {"key": "retrieval", "metrics": {"chrf": 13.0, "bleu": 1.5}, "versus": {"chrf": versus, "bleu": versus}}
        ],
    }
    (where / "eval.json").write_text(json.dumps(report), encoding="utf-8")


def test_the_table_reads_every_seed_and_gives_the_two_level_intervals(tmp_path, capsys):
    n_bytes = [40, 60, 80, 100] * 5
    own = [n * 1.0 for n in n_bytes]
    fake_run(tmp_path / "a-seed1", own, [n * 1.2 for n in n_bytes], n_bytes)
    fake_run(tmp_path / "a-seed2", own, [n * 1.3 for n in n_bytes], n_bytes)
    fake_run(tmp_path / "b", [n * 1.1 for n in n_bytes], [n * 1.1 for n in n_bytes], n_bytes)
    assert load_script().main(["--arm", "a", "--arm", "b", "--runs", str(tmp_path), "--resamples", "200"]) == 0
    out = capsys.readouterr().out
    assert "### flops-1e+12" in out and "`a` (mean ± sd; 2 seeds)" in out and "`b` (mean ± sd; 1 seed)" in out
    gap = next(line for line in out.splitlines() if line.startswith("| input-use gap"))
    # arm a: 0.2 and 0.3 nats a byte more with shuffled histories; arm b reads nothing: exactly 0
    low_a = 0.2 / math.log(2)
    cells = gap.split("|")
    assert float(cells[2].split("[")[1].split(",")[0]) == pytest.approx(low_a, abs=1e-4)  # printed to 4 decimals
    assert cells[3].strip() == "+0.0000 [+0.0000, +0.0000]"
    assert "`a` - `b`, reference bits per byte (lower is better): -0.144" in out  # -0.1 / ln 2


def test_no_budgets_is_a_clear_error(tmp_path, capsys):
    assert load_script().main(["--arm", "a", "--runs", str(tmp_path)]) == 2
    assert "no budgets/ folders" in capsys.readouterr().err
