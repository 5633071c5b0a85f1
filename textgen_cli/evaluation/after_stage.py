"""What follows a training stage run from the command line: the evaluation on the test split (when
the stage is evaluated and `eval.after_finetune` is on), which also puts its scores in the model
card. An evaluation that fails leaves the trained model saved and says why it was not scored."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from textgen_cli.core.errors import DiskFull, UserError
from textgen_cli.core.progress import log
from textgen_cli.core.stages import evaluated_after_training

if TYPE_CHECKING:
    from textgen_cli.core.loaded_recipe import LoadedRecipe
    from textgen_cli.core.results import EvalReport, RunSummary


def evaluate_after_stage(loaded: LoadedRecipe, stage: str, summary: RunSummary) -> EvalReport | None:
    """The stage's evaluation on the test split, or None when there is none (or it failed)."""
    recipe = loaded.recipe
    if not evaluated_after_training(recipe, stage):
        return None
    from textgen_cli.evaluation.evaluate import run_evaluate
    from textgen_cli.training.model_card import record_evaluation

    try:
        report = run_evaluate(loaded, summary.final_dir, None, "test", [])
    except (UserError, DiskFull) as exc:  # the trained model is saved; say why it was not scored
        log(
            f"warning: evaluation after {stage} failed: {exc}; the model is saved in {summary.final_dir}",
            level=logging.WARNING,
        )
        return None
    record_evaluation(report)
    return report
