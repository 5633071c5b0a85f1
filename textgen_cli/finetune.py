"""`textgen finetune`: source -> target for `sora`, chat template with assistant-only loss for `chatgpt`.

Starts from the same recipe's pretrain output (or `model.init_from`). Pairs tasks are cast to
one-turn chats for `chatgpt`, so both families learn from exactly the same examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textgen_cli.data import Dialogue, read_finetune_examples, with_system_prompt
from textgen_cli.errors import UserError
from textgen_cli.models import FAMILIES, init_from_dir, load_checkpoint
from textgen_cli.objectives import ChatEncoder, ChatExamples, Seq2SeqExamples, TruncationCount, encode_texts, fit_chat, fit_seq2seq
from textgen_cli.progress import log
from textgen_cli.recipe import LoadedRecipe
from textgen_cli.runs import FINAL_DIR, reset_peak_memory
from textgen_cli.tokenizer import load_tokenizer
from textgen_cli.train import train_stage

HOLDOUT_FRACTION = 0.05


# The stage each stage continues from, when model.init_from does not say otherwise.
PREVIOUS_STAGE = {"finetune": "pretrain", "adv-train": "finetune"}


def starting_point(loaded: LoadedRecipe, stage: str = "finetune") -> Path:
    """`model.init_from`, else this recipe's finished model of the stage before `stage`."""
    if loaded.recipe.model.init_from:
        return init_from_dir(loaded)
    previous = PREVIOUS_STAGE[stage]
    path = loaded.run_dir(previous) / FINAL_DIR
    if not path.is_dir():
        raise UserError(
            f"{stage} starts from the {previous} output '{path}', which does not exist: "
            f"run `textgen {previous} --recipe {loaded.path.name}` first, or set model.init_from=DIR"
        )
    return path


def chatgpt_examples(dialogues: list[Dialogue], tokenizer, loaded: LoadedRecipe, context: int, count: TruncationCount) -> ChatExamples:
    encoder = ChatEncoder(tokenizer)
    recipe = loaded.recipe
    sequences = []
    for dialogue in dialogues:
        messages = with_system_prompt(dialogue, recipe.prompt.system)
        fitted = fit_chat(encoder, dialogue.id, messages, context, recipe.data.too_long, count)
        if fitted is not None:
            sequences.append(fitted)
    return ChatExamples(sequences, pad_id=tokenizer.pad_token_id)


def sora_examples(dialogues: list[Dialogue], tokenizer, loaded: LoadedRecipe, context: int, count: TruncationCount) -> Seq2SeqExamples:
    """One (source, target) per assistant turn: the source is the plain text for pairs tasks and
    the role-tagged history for dialogues; the target is the response followed by eos."""
    encoder = ChatEncoder(tokenizer)
    recipe = loaded.recipe
    pairs_task = recipe.data.finetune.task == "pairs"
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    examples = []
    for dialogue in dialogues:
        for position, turn in enumerate(dialogue.messages):
            if turn["role"] != "assistant":
                continue
            history = dialogue.messages[:position]
            if pairs_task:
                source = [bos, *encode_texts(tokenizer, [history[-1]["content"]])[0], eos]
            else:
                source = encoder.encode_history(history)
            target = [*encode_texts(tokenizer, [turn["content"]])[0], eos]
            examples.append(fit_seq2seq(source, target, eos, context, "start" if pairs_task else "end", dialogue.id, recipe.data.too_long, count))
    return Seq2SeqExamples(examples, pad_id=tokenizer.pad_token_id, bos_id=bos)


@dataclass
class FinetuneSetup:
    """What finetune and adv-train share: a starting model, its tokenizer and the dialogues."""

    start: Path
    model: Any
    tokenizer: Any
    context: int
    train_dialogues: list[Dialogue]
    val_dialogues: list[Dialogue]


def prepare(loaded: LoadedRecipe, start: Path, stage: str) -> FinetuneSetup:
    import accelerate

    recipe = loaded.recipe
    tokenizer = load_tokenizer(start)
    family = FAMILIES[recipe.model.family]
    accelerate.utils.set_seed(recipe.train.seed)
    model = load_checkpoint(start, family.name, len(tokenizer))
    section = recipe.data.finetune
    train_dialogues = read_finetune_examples(section, "train", recipe.data.max_examples)
    if section.validation:
        val_dialogues = read_finetune_examples(section, "validation", recipe.data.max_examples)
    else:
        cut = max(1, int(len(train_dialogues) * HOLDOUT_FRACTION))
        train_dialogues, val_dialogues = train_dialogues[:-cut], train_dialogues[-cut:]
        log(f"{stage}: no data.finetune.validation; holding out the last {cut} records")
    return FinetuneSetup(start, model, tokenizer, model.config.max_position_embeddings, train_dialogues, val_dialogues)


def build_examples(loaded: LoadedRecipe, setup: FinetuneSetup, stage: str) -> tuple[Any, Any, int]:
    """Tokenized training and validation sets for the recipe's family; returns the truncation count."""
    build = sora_examples if FAMILIES[loaded.recipe.model.family].is_encoder_decoder else chatgpt_examples
    count = TruncationCount()
    train_set = build(setup.train_dialogues, setup.tokenizer, loaded, setup.context, count)
    val_set = build(setup.val_dialogues, setup.tokenizer, loaded, setup.context, count)
    if count.truncated:
        dropped = f" ({count.dropped} dropped: nothing left to learn)" if count.dropped else ""
        log(f"warning: {stage}: {count.truncated} examples were longer than model.context={setup.context} and were truncated{dropped}")
    return train_set, val_set, count.truncated


def run_finetune(loaded: LoadedRecipe) -> dict[str, Any]:
    reset_peak_memory()  # the stage's own peak, data preparation included
    setup = prepare(loaded, starting_point(loaded), "finetune")
    train_set, val_set, truncated = build_examples(loaded, setup, "finetune")
    recipe = loaded.recipe
    extra = {"init_from": str(setup.start), "task": recipe.data.finetune.task, "truncated_examples": truncated, "system_prompt": recipe.prompt.system}
    return train_stage(loaded, "finetune", setup.model, setup.tokenizer, train_set, val_set, extra)
