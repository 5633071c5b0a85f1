"""`textgen finetune`: source -> target for `sora`, chat template with assistant-only loss for `chatgpt`.

Starts from the same recipe's pretrain output, or `model.init_from`: any save_pretrained directory,
a hub id, or `scratch` (random weights). Pairs tasks are cast to one-turn chats for `chatgpt`, so
both families learn from exactly the same examples. The role (models/roles.py) builds the examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textgen_cli.core.errors import UserError
from textgen_cli.core.files import FINAL_DIR
from textgen_cli.core.progress import log
from textgen_cli.core.results import RunSummary
from textgen_cli.core.stages import STAGE_TABLE, evaluated_after_training
from textgen_cli.data.readers import Dialogue, read_finetune_examples
from textgen_cli.data.tokenizer import adapt_tokenizer
from textgen_cli.models import (
    DECODER_ONLY,
    ENCODER_DECODER,
    SCRATCH,
    Role,
    context_of,
    init_from,
    load_pretrained,
    role_for,
)
from textgen_cli.objectives import ChatExamples, Seq2SeqExamples, TruncationCount
from textgen_cli.recipe import LoadedRecipe
from textgen_cli.training.run_dir import reset_peak_memory
from textgen_cli.training.train import train_stage

HOLDOUT_FRACTION = 0.05


def starting_point(loaded: LoadedRecipe, stage: str = "finetune") -> str:
    """`model.init_from` (a directory, a hub id or `scratch`), else this recipe's finished model of
    the stage before `stage`."""
    if loaded.recipe.model.init_from:
        return init_from(loaded)
    previous = STAGE_TABLE[stage].previous
    path = loaded.run_dir(previous) / FINAL_DIR
    if not path.is_dir():
        raise UserError(
            f"{stage} starts from the {previous} output '{path}', which does not exist: "
            f"run `textgen {previous} --recipe {loaded.path.name}` first, or set model.init_from=DIR (or a hub id, or scratch)"
        )
    return str(path)


def chatgpt_examples(
    dialogues: list[Dialogue], tokenizer, loaded: LoadedRecipe, context: int, count: TruncationCount
) -> ChatExamples:
    return DECODER_ONLY.finetune_examples(dialogues, tokenizer, loaded, context, count)


def sora_examples(
    dialogues: list[Dialogue], tokenizer, loaded: LoadedRecipe, context: int, count: TruncationCount
) -> Seq2SeqExamples:
    return ENCODER_DECODER.finetune_examples(dialogues, tokenizer, loaded, context, count)


@dataclass
class FinetuneSetup:
    """What finetune and adv-train share: a starting model, its tokenizer and the dialogues."""

    start: str
    model: Any
    tokenizer: Any
    context: int
    train_dialogues: list[Dialogue]
    val_dialogues: list[Dialogue]
    role: Role = DECODER_ONLY
    notes: dict[str, Any] = field(default_factory=dict)  # what the summary records about the start


def starting_model(loaded: LoadedRecipe, start: str, stage: str) -> tuple[Any, Any, dict[str, Any]]:
    """The model and tokenizer `start` names: random weights (`scratch`), or a checkpoint (a run's
    output, any save_pretrained directory, a hub id) with its tokenizer adapted."""
    import accelerate

    recipe = loaded.recipe
    if start == SCRATCH:
        from textgen_cli.training.pretrain import recipe_tokenizer, scratch_model

        tokenizer = recipe_tokenizer(loaded)
        adapt_tokenizer(tokenizer)  # adds nothing to a tokenizer textgen trained
        model = scratch_model(loaded, tokenizer)
        log(
            f"{stage}: from scratch: a `{recipe.model.family}` model with random weights in layout {model.config.model_type} (model.init_from=scratch)"
        )
        return model, tokenizer, {"from_scratch": True}
    accelerate.utils.set_seed(recipe.train.seed)
    pretrained = load_pretrained(start, recipe.model.family, context=recipe.model.context)
    for line in pretrained.adaptation(stage):
        log(line)
    notes = {"added_tokens": pretrained.added_tokens} if pretrained.added_tokens else {}
    if pretrained.tokens_beyond_rows:
        notes["tokens_beyond_rows"] = pretrained.tokens_beyond_rows
    return pretrained.model, pretrained.tokenizer, notes


def trainable_new_tokens(tokenizer, notes: dict[str, Any]) -> list[int]:
    """The ids of the tokens added to the starting model's tokenizer, whose rows LoRA must train
    (they start as the mean row). Not the pad token: no position reads it (it is masked) and no
    label is one, so its row never matters."""
    added = [*notes.get("tokens_beyond_rows", []), *notes.get("added_tokens", [])]
    ids = [tokenizer.convert_tokens_to_ids(token) for token in added]
    return [index for index in ids if index != tokenizer.pad_token_id]


def prepare(loaded: LoadedRecipe, start: str | Path, stage: str) -> FinetuneSetup:
    recipe = loaded.recipe
    role = role_for(recipe.model.family)
    model, tokenizer, notes = starting_model(loaded, str(start), stage)
    if recipe.model.lora.rank:
        from textgen_cli.models.lora import attach_lora

        model, lora_notes = attach_lora(
            model,
            recipe.model.lora,
            str(loaded.path),
            new_tokens=trainable_new_tokens(tokenizer, notes),
            input_grads=stage == "adv-train",  # it perturbs the input embeddings and needs their gradient
        )
        notes["lora"] = lora_notes
        log(
            f"{stage}: LoRA rank {lora_notes['rank']} on {', '.join(lora_notes['target_modules'])}: "
            f"{lora_notes['trainable_parameters']:,} trainable parameters of {lora_notes['total_parameters']:,} ({100 * lora_notes['trainable_share']:.2f}%)"
        )
    section = recipe.data.finetune
    train_dialogues = read_finetune_examples(section, "train", recipe.data.max_examples)
    if section.validation:
        val_dialogues = read_finetune_examples(section, "validation", recipe.data.max_examples)
    else:
        cut = max(1, int(len(train_dialogues) * HOLDOUT_FRACTION))
        train_dialogues, val_dialogues = train_dialogues[:-cut], train_dialogues[-cut:]
        log(f"{stage}: no data.finetune.validation; holding out the last {cut} records")
    if evaluated_after_training(recipe, stage):
        # read after training; a missing or malformed test file is reported now, not after the last step
        read_finetune_examples(section, "test", recipe.data.max_examples)
    context = context_of(model.config) or recipe.model.context
    return FinetuneSetup(str(start), model, tokenizer, context, train_dialogues, val_dialogues, role, notes)


def build_examples(loaded: LoadedRecipe, setup: FinetuneSetup, stage: str) -> tuple[Any, Any, int]:
    """Tokenized training and validation sets for the recipe's role; returns the truncation count."""
    count = TruncationCount()
    start_id = setup.role.decoder_start_id(setup.model, setup.tokenizer)
    train_set = setup.role.finetune_examples(
        setup.train_dialogues, setup.tokenizer, loaded, setup.context, count, start_id
    )
    val_set = setup.role.finetune_examples(setup.val_dialogues, setup.tokenizer, loaded, setup.context, count, start_id)
    if count.truncated:
        dropped = f" ({count.dropped} dropped: nothing left to learn)" if count.dropped else ""
        log(
            f"warning: {stage}: {count.truncated} examples were longer than model.context={setup.context} and were truncated{dropped}"
        )
    return train_set, val_set, count.truncated


def run_finetune(loaded: LoadedRecipe) -> RunSummary:
    reset_peak_memory()  # the stage's own peak, data preparation included
    setup = prepare(loaded, starting_point(loaded), "finetune")
    train_set, val_set, truncated = build_examples(loaded, setup, "finetune")
    recipe = loaded.recipe
    extra = {
        "init_from": setup.start,
        "task": recipe.data.finetune.task,
        "truncated_examples": truncated,
        "system_prompt": setup.role.system_prompt(recipe),
        **setup.notes,
    }
    return train_stage(
        loaded,
        "finetune",
        model=setup.model,
        tokenizer=setup.tokenizer,
        train_set=train_set,
        val_set=val_set,
        notes=extra,
    )
