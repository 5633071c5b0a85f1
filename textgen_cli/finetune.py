"""`textgen finetune`: source -> target for `sora`, chat template with assistant-only loss for `chatgpt`.

Starts from the same recipe's pretrain output (or `model.init_from`). Pairs tasks are cast to
one-turn chats for `chatgpt`, so both families learn from exactly the same examples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textgen_cli.data import Dialogue, read_finetune_examples, with_system_prompt
from textgen_cli.errors import UserError
from textgen_cli.models import FAMILIES, load_checkpoint
from textgen_cli.objectives import ChatEncoder, ChatExamples, Seq2SeqExamples, TruncationCount, encode_texts, fit_chat, fit_seq2seq
from textgen_cli.progress import log
from textgen_cli.recipe import LoadedRecipe
from textgen_cli.runs import FINAL_DIR
from textgen_cli.tokenizer import load_tokenizer
from textgen_cli.train import train_stage

HOLDOUT_FRACTION = 0.05


def starting_point(loaded: LoadedRecipe) -> Path:
    """`model.init_from`, else this recipe's finished pretrain model."""
    if loaded.recipe.model.init_from:
        return Path(loaded.recipe.model.init_from)
    pretrained = loaded.run_dir("pretrain") / FINAL_DIR
    if not pretrained.is_dir():
        raise UserError(
            f"finetune starts from the pretrain output '{pretrained}', which does not exist: "
            f"run `textgen pretrain --recipe {loaded.path.name}` first, or set model.init_from=DIR"
        )
    return pretrained


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


def run_finetune(loaded: LoadedRecipe) -> dict[str, Any]:
    import accelerate

    recipe = loaded.recipe
    start = starting_point(loaded)
    tokenizer = load_tokenizer(start)
    family = FAMILIES[recipe.model.family]
    accelerate.utils.set_seed(recipe.train.seed)
    model = load_checkpoint(start, family.name, len(tokenizer))
    context = model.config.max_position_embeddings

    section = recipe.data.finetune
    train_dialogues = read_finetune_examples(section, "train", recipe.data.max_examples)
    if section.validation:
        val_dialogues = read_finetune_examples(section, "validation", recipe.data.max_examples)
    else:
        cut = max(1, int(len(train_dialogues) * HOLDOUT_FRACTION))
        train_dialogues, val_dialogues = train_dialogues[:-cut], train_dialogues[-cut:]
        log(f"finetune: no data.finetune.validation; holding out the last {cut} records")

    build = sora_examples if family.is_encoder_decoder else chatgpt_examples
    count = TruncationCount()
    train_set = build(train_dialogues, tokenizer, loaded, context, count)
    val_set = build(val_dialogues, tokenizer, loaded, context, count)
    if count.truncated:
        log(f"warning: {count.truncated} finetuning examples were longer than model.context={context} and were truncated"
            + (f" ({count.dropped} dropped: nothing left to learn)" if count.dropped else ""))
    extra = {"init_from": str(start), "task": section.task, "truncated_examples": count.truncated, "system_prompt": recipe.prompt.system}
    return train_stage(loaded, "finetune", model, tokenizer, train_set, val_set, extra)
