"""`textgen compare --lr-grid 1e-3,2e-3,4e-3`: each arm picks its learning rate from the same grid,
judged on the VALIDATION split with the primary generation metric, never on test.

Each arm is trained once per grid value (its first seed, to the largest budget, or to its recipe's
steps without --budget), its final model decodes the validation split the way `textgen evaluate
--split validation` does, and the value with the best primary metric becomes the arm's `train.lr`
for every seed of the comparison. The grid, each value's validation score and each arm's pick are
printed and written to the report (lr_grid.md, lr_grid.json).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textgen_cli.core.errors import UserError
from textgen_cli.core.progress import log


@dataclass
class GridResult:
    arm: str
    scores: dict[float, float] = field(default_factory=dict)  # lr -> validation primary metric
    chosen: float | None = None


def parse_grid(text: str) -> list[float]:
    try:
        values = sorted({float(item) for item in text.split(",")})
    except ValueError:
        raise UserError(f"--lr-grid {text}: expected learning rates separated by commas, e.g. 1e-3,2e-3,4e-3") from None
    if not values or any(v <= 0 for v in values):
        raise UserError(f"--lr-grid {text}: every learning rate must be positive")
    return values


def tune_arm(base: str, loaded, grid: list[float], primary: str, steps_override: list[str]) -> GridResult:
    """Train `loaded` (one seed) at each learning rate of the grid and score each on validation."""
    from textgen_cli.comparison.matching import stage_done, with_overrides
    from textgen_cli.comparison.significance import primary_value
    from textgen_cli.core.files import FINAL_DIR
    from textgen_cli.evaluation.evaluate import run_evaluate
    from textgen_cli.metrics.registry import higher_is_better
    from textgen_cli.training import run_stage

    if not loaded.recipe.data.finetune.validation:
        raise UserError(f"{loaded.path}: key 'data.finetune.validation' is empty; --lr-grid judges on validation")
    result = GridResult(base)
    last = list(loaded.recipe.stages)[-1]
    for lr in grid:
        at = with_overrides(loaded, [*steps_override, f"train.lr={lr:g}", f"run.name={base}-lr{lr:g}"])
        for stage in at.recipe.stages:
            if not stage_done(at, stage):
                log(f"compare --lr-grid: training {at.name} {stage}")
                run_stage(at, stage)
        folder = at.run_dir(last).parent / "lr-grid-validation"
        report = _validation_report(at, last, folder)
        if report is None:
            run_evaluate(at, str(at.run_dir(last) / FINAL_DIR), None, "validation", [], output=str(folder))
            report = _validation_report(at, last, folder)
        value = primary_value(report, primary)
        if value is None:
            raise UserError(f"--lr-grid: the validation evaluation of {at.name} has no {primary}")
        result.scores[lr] = value
        log(f"compare --lr-grid: {base} lr {lr:g}: validation {primary} {result.scores[lr]:.4g}")
    best = min if higher_is_better(primary) is False else max  # bits per byte: lower is better
    result.chosen = best(result.scores, key=result.scores.get)
    return result


def _validation_report(loaded, stage: str, folder: Path) -> dict[str, Any] | None:
    """The validation evaluation in `folder` if it was made of this very model and settings."""
    from textgen_cli.evaluation.eval_files import eval_hash

    try:
        record = json.loads((folder / "eval-validation.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if record.get("eval_hash") == eval_hash(loaded, stage, "validation") else None


def grid_lines(results: list[GridResult], primary: str) -> list[str]:
    grid = sorted({lr for r in results for lr in r.scores})
    head = f"| arm | {' | '.join(f'lr {lr:g}' for lr in grid)} | chosen |"
    lines = [f"Learning rate per arm, from the same grid, by validation {primary} (never test):", "", head]
    lines.append("|---|" + "---:|" * (len(grid) + 1))
    for r in results:
        cells = [f"**{r.scores[lr]:.2f}**" if lr == r.chosen else f"{r.scores[lr]:.2f}" for lr in grid]
        lines.append(f"| {r.arm} | {' | '.join(cells)} | {r.chosen:g} |")
    return lines


def write_grid(folder: Path, results: list[GridResult], primary: str) -> None:
    from textgen_cli.core.files import write_text_atomic

    write_text_atomic(folder / "lr_grid.md", "\n".join(grid_lines(results, primary)) + "\n")
    record = {
        "primary_metric": primary,
        "split": "validation",
        "arms": [
            {"arm": r.arm, "scores": {f"{k:g}": v for k, v in r.scores.items()}, "chosen": r.chosen} for r in results
        ],
    }
    write_text_atomic(folder / "lr_grid.json", json.dumps(record, indent=2))
