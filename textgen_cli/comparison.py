"""What a comparison is made of: the models, the table's columns and cells, and how a table row's
lead is marked. `compare.py` fills them (training, evaluation, significance); `report.py` writes them
to files; both print the same table from them. Plain data and formatting: no training, no torch.

A table row is a dict: group, row, label, cells (formatted), best (column index or None),
significant, test (the significance test, `untested` or `not ranked`), higher_is_better.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textgen_cli.runs import FINAL_DIR

if TYPE_CHECKING:
    from textgen_cli.recipe import LoadedRecipe
    from textgen_cli.results import EvalReport, RunSummary


@dataclass
class Model:
    """One column of the report: a trained model and everything measured about it."""

    label: str
    loaded: LoadedRecipe
    stage: str
    seed: int
    run_dirs: list[Path] = field(default_factory=list)  # every stage that led to this model
    reused: dict[str, bool] = field(default_factory=dict)
    summaries: list[RunSummary] = field(default_factory=list)
    eval: EvalReport | None = None  # set by evaluate_model
    predictions: list[str] = field(default_factory=list)
    eval_dir: Path | None = None  # where its eval.json and predictions.jsonl are

    @property
    def final_dir(self) -> Path:
        return self.loaded.run_dir(self.stage) / FINAL_DIR


@dataclass
class Cell:
    """One model's value of one row: a mean over seeds (std) or one value with its 95% interval."""

    value: float
    low: float | None = None
    high: float | None = None
    std: float | None = None
    n: int = 1
    values: list[float] = field(default_factory=list)  # one per seed


@dataclass
class Column:
    """One column of the table: a recipe's models (one per seed), or a baseline."""

    label: str
    models: list[Model]  # one per seed; none for a baseline
    cells: dict[str, Cell] = field(default_factory=dict)
    baseline: bool = False  # a trivial system (copy source, retrieval, ...): shown, never ranked


def effect_lines(effects: list[dict[str, Any]]) -> list[str]:
    return [
        f"does pretraining help? {e['answer']}: {e['pretrained']} minus {e['scratch']}: {e['detail']} "
        f"(95% paired bootstrap; training FLOPs {e['flops']['pretrained']:.3g} vs {e['flops']['scratch']:.3g})"
        for e in effects
    ]


UNTESTED = "†"


def lead_mark(r: dict[str, Any]) -> str:
    """The marker after the best cell: `*` a significant lead, `* n.s.` a tested lead inside the
    noise, `†` a lead that no interval or test backs (never to be read as a win)."""
    if r["test"] == "untested":
        return UNTESTED
    return "*" if r["significant"] else "* n.s."


def legend(rows: list[dict[str, Any]]) -> str:
    tests = sorted({r["test"] for r in rows if r["test"] not in ("untested", "not ranked")})
    return (
        f"*: best model in row, its lead over the runner-up significant at 95% ({', '.join(tests) or 'no test ran'}); "
        f"n.s.: the lead is inside the noise; {UNTESTED}: best in row but untested (no interval, no test): not a significant win; "
        "baseline columns are never ranked (the verdicts compare each model with them)"
    )


def verdicts(columns: list[Column]) -> list[tuple[str, dict[str, Any]]]:
    """(model label, verdict) for every trained model, each seed on its own."""
    out = []
    for column in columns:
        for model in column.models:
            if model.eval is not None and model.eval.verdict is not None:
                label = column.label if len(column.models) == 1 else f"{column.label} (seed {model.seed})"
                out.append((label, model.eval.verdict))
    return out
