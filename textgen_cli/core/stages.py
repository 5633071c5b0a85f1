"""The training stages, one entry each: everything the rest of textgen needs to know about a stage.

The command line, `textgen compare`, the stage hash, the recipe checks and the starting point of a
stage all read this table. Adding a stage means one entry here plus its own code: a module with a
`run_<stage>(loaded) -> summary` function (see `training/finetune.py`), its recipe section in `schema.py`
(at least `steps` and `lr`) and its command in `cli/app.py`.

Nothing heavy is imported here (the command line reads the table at start-up): a stage's module is
imported only when the stage runs (`training.run_stage`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    name: str  # the command (`textgen adv-train`), the run folder (runs/<run>/adv-train/), the entry in `stages:`
    section: str  # the recipe section with the stage's own settings (`adv_train.steps`, `adv_train.lr`)
    previous: str | None  # the stage whose final model it starts from, unless `model.init_from` says otherwise
    runner: str  # "module:function" that trains it: function(loaded) -> summary dict, imported when it runs
    evaluated: bool  # its model answers prompts: scored on the test split after training, a column in `textgen compare`
    data: str  # the `data.<data>` section it trains on (its `train` file is required)
    hash_keys: tuple[
        str, ...
    ]  # the recipe keys that decide what it trains; its stage hash adds the previous stages' keys


STAGE_TABLE: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage(
            name="pretrain",
            section="pretrain",
            previous=None,
            runner="textgen_cli.training.pretrain:run_pretrain",
            evaluated=False,
            data="pretrain",
            hash_keys=("model", "tokenizer", "data.pretrain", "data.max_examples", "train", "pretrain"),
        ),
        Stage(
            name="finetune",
            section="finetune",
            previous="pretrain",
            runner="textgen_cli.training.finetune:run_finetune",
            evaluated=True,
            data="finetune",
            hash_keys=("data.finetune", "data.too_long", "prompt", "finetune"),
        ),
        Stage(
            name="adv-train",
            section="adv_train",
            previous="finetune",
            runner="textgen_cli.training.adv_train:run_adv_train",
            evaluated=True,
            data="finetune",
            hash_keys=("adv_train",),
        ),
    )
}

# in training order: a stage comes after the stage it starts from
STAGES: tuple[str, ...] = tuple(STAGE_TABLE)
EVALUATED_STAGES: tuple[str, ...] = tuple(name for name, stage in STAGE_TABLE.items() if stage.evaluated)


def section_of(stage: str) -> str:
    """The recipe section of a stage: `adv-train` -> `adv_train`."""
    return STAGE_TABLE[stage].section


def lineage(stage: str) -> list[str]:
    """The stages whose settings shape `stage`'s model, oldest first, ending with `stage` itself:
    `adv-train` -> [pretrain, finetune, adv-train]. Whether the recipe runs the earlier stages does
    not matter (the stage hash has always chained them)."""
    chain = [stage]
    while STAGE_TABLE[chain[0]].previous is not None:
        chain.insert(0, STAGE_TABLE[chain[0]].previous)  # type: ignore[arg-type]
    return chain


def evaluated_after_training(recipe: Any, stage: str) -> bool:
    """Whether `stage` is scored on the test split once it has trained (`eval.after_finetune`): its
    test file is then read before the first step, so that a bad one fails at once, not after training."""
    return bool(STAGE_TABLE[stage].evaluated and recipe.eval.after_finetune and recipe.data.finetune.test)
