"""Training: one loop for every stage (`train.py`), the stages that feed it (`pretrain.py`,
`finetune.py`, `adv_train.py`), checkpoints and resume, distribution, and a run's outputs.

`run_stage` imports a stage's module only when it runs, so that the command line's start-up stays
free of torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from textgen_cli.core.stages import STAGE_TABLE

if TYPE_CHECKING:
    from textgen_cli.core.loaded_recipe import LoadedRecipe


def runner(stage: str) -> Callable[[Any], dict[str, Any]]:
    """The function that trains `stage`, imported now (torch and transformers come with it)."""
    module, function = STAGE_TABLE[stage].runner.split(":")
    return getattr(importlib.import_module(module), function)


def run_stage(loaded: LoadedRecipe, stage: str) -> dict[str, Any]:
    """Train `stage` of the recipe `loaded`; returns the stage's summary."""
    return runner(stage)(loaded)
