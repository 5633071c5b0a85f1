"""What a comparison is made of: the models, the table's columns and cells, and how a table row's
lead is marked. `compare.py` fills them (training, evaluation, significance); `report.py` writes them
to files; both print the same table from them. Plain data and formatting: no training, no torch.

A table row is a dict: group, row, label, cells (formatted), best (column index or None), tested,
significant, withheld (why a significant lead gets no star, or None), test (how it was tested, or
`untested` / `not ranked`), p, diff, higher_is_better.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textgen_cli.core.files import FINAL_DIR

if TYPE_CHECKING:
    from textgen_cli.core.loaded_recipe import LoadedRecipe
    from textgen_cli.core.results import EvalReport, RunSummary


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
    # per test example, the reference's summed NLL (nats) and UTF-8 bytes; None unless every example has them
    reference_scores: list[tuple[float, int]] | None = None
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


def controlled_line(confounded: list[str], factors: Sequence[str] = ()) -> str:
    """The first line of every comparison: is it a controlled one?"""
    if confounded:
        return "CONFOUNDED: the arms differ in more than the family: " + "; ".join(confounded) + " (no lead is starred)"
    extra = f" and the declared factor{'s' if len(factors) > 1 else ''} {', '.join(factors)}" if factors else ""
    return f"controlled: the arms differ only in the family{extra} (settings below)"


def effect_lines(effects: list[dict[str, Any]]) -> list[str]:
    return [
        f"does pretraining help? {e['answer']}: {e['pretrained']} minus {e['scratch']}: {e['detail']} "
        f"(95% paired bootstrap; training FLOPs {e['flops']['pretrained']:.3g} vs {e['flops']['scratch']:.3g})"
        for e in effects
    ]


UNTESTED = "†"


def lead_mark(r: dict[str, Any]) -> str:
    """The marker after the best cell (one legend, significance.py): `*` a significant lead, `n.s.`
    a tested lead inside the noise, `†` no claim (untested, or a star withheld: `withheld` says why)."""
    if r["significant"]:
        return "*"
    if r.get("tested") and not r.get("withheld"):
        return "n.s."
    return UNTESTED


def legend(rows: list[dict[str, Any]], primary: str | None = None) -> str:
    tests = sorted({r["test"].split(":")[0] for r in rows if r.get("tested")})
    primary_text = f"; primary metric: {primary}, the other tested rows Holm-corrected" if primary else ""
    return (
        f"*: best model in row, its lead over the runner-up significant at 95% ({', '.join(tests) or 'no test ran'}{primary_text}); "
        f"n.s.: tested, the lead is inside the noise; {UNTESTED}: no claim: untested (no per-example statistic), "
        "or a star withheld (one seed per arm, a flagged model, or confounded arms: the reason is listed); "
        "baseline columns are never ranked (the verdicts compare each model with them)"
    )


def withheld_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per distinct reason a star was withheld, with the rows it applies to."""
    reasons: dict[str, list[str]] = {}
    for r in rows:
        if r.get("withheld"):
            reasons.setdefault(r["withheld"], []).append(r["label"])
    return [f"{UNTESTED} no star for {', '.join(labels)}: {reason}" for reason, labels in reasons.items()]


def verdicts(columns: list[Column]) -> list[tuple[str, dict[str, Any]]]:
    """(model label, verdict) for every trained model, each seed on its own."""
    out = []
    for column in columns:
        for model in column.models:
            if model.eval is not None and model.eval.verdict is not None:
                label = column.label if len(column.models) == 1 else f"{column.label} (seed {model.seed})"
                out.append((label, model.eval.verdict))
    return out
