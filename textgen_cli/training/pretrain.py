"""`textgen pretrain`: a tokenizer and a model from scratch on the recipe's prose corpus
(or `model.init_from`: a pretrained checkpoint trained further on it).

The role sets the objective: `chatgpt` learns causal LM on packed blocks; `sora` learns BART text
infilling (T5 span corruption for a tokenizer with T5's sentinels).
"""

from __future__ import annotations

import time

from textgen_cli.core.errors import UserError
from textgen_cli.core.progress import log
from textgen_cli.core.results import RunSummary
from textgen_cli.data.packing import TextSource, packed_blocks, split_sources
from textgen_cli.data.readers import read_finetune_examples
from textgen_cli.data.tokenizer import Corpus, adapt_tokenizer, get_tokenizer, texts_corpus
from textgen_cli.models import SCRATCH, context_of, init_from, load_pretrained, role_for
from textgen_cli.recipe import LoadedRecipe
from textgen_cli.training.run_dir import reset_peak_memory
from textgen_cli.training.train import train_stage

HOLDOUT_FRACTION = 0.05  # validation taken from the end of the corpus when the recipe names none


def tokenizer_corpus(loaded: LoadedRecipe, train: TextSource) -> Corpus:
    """The pretraining text (streamed), plus the finetune training split when the recipe asks for it."""
    recipe = loaded.recipe
    finetune = recipe.data.finetune
    extra: list[str] = []
    if recipe.tokenizer.include_finetune_data and finetune.train:
        for dialogue in read_finetune_examples(finetune, "train", recipe.data.max_examples):
            extra.extend(turn["content"] for turn in dialogue.messages)
    extra_key = texts_corpus(extra).key

    def batches():
        yield from train.batches()
        if extra:
            yield extra

    description = f"{train.path.name}" + (f" and {len(extra)} finetuning texts" if extra else "")
    return Corpus(f"{train.key()}|{extra_key}", batches, description)


def recipe_tokenizer(loaded: LoadedRecipe, train: TextSource | None = None):
    """The tokenizer a model built from scratch uses: `tokenizer.path`, else byte-level BPE trained
    (or found in the cache) the way pretrain trains it: on the pretraining text, plus the finetune
    training split when the recipe asks; with no pretraining text, on the finetune training split."""
    recipe = loaded.recipe
    data = recipe.data.pretrain
    if recipe.tokenizer.path:
        tokenizer = get_tokenizer([], recipe.tokenizer, log=log)
    elif data.train:
        if train is None:
            train, _, _ = split_sources(
                data.train, data.text_field, recipe.data.max_examples, data.validation, HOLDOUT_FRACTION
            )
        tokenizer = get_tokenizer(tokenizer_corpus(loaded, train), recipe.tokenizer, log=log)
    else:
        finetune = recipe.data.finetune
        texts = [
            turn["content"]
            for dialogue in read_finetune_examples(finetune, "train", recipe.data.max_examples)
            for turn in dialogue.messages
        ]
        corpus = texts_corpus(texts)
        corpus.description = f"{len(texts)} finetuning texts (no data.pretrain.train)"
        tokenizer = get_tokenizer(corpus, recipe.tokenizer, log=log)
    return tokenizer


def scratch_model(loaded: LoadedRecipe, tokenizer):
    """Random weights in the recipe's layout (`model.arch`) and sizes, seeded by train.seed."""
    import accelerate

    role = role_for(loaded.recipe.model.family)
    role.arch(loaded.recipe.model, str(loaded.path))  # a layout of another family stops here, before seeding
    accelerate.utils.set_seed(loaded.recipe.train.seed)  # the model's initial weights depend on it
    return role.build(loaded.recipe.model, tokenizer, str(loaded.path))


def run_pretrain(loaded: LoadedRecipe) -> RunSummary:
    import accelerate

    recipe = loaded.recipe
    data = recipe.data.pretrain
    reset_peak_memory()  # the stage's own peak, data preparation included
    if not data.train:
        raise UserError(f"{loaded.path}: key 'data.pretrain.train' is required to pretrain")
    train_source, val_source, held_out = split_sources(
        data.train, data.text_field, recipe.data.max_examples, data.validation, HOLDOUT_FRACTION
    )
    if held_out:
        log(f"pretrain: no data.pretrain.validation; holding out the last {held_out} records")

    role = role_for(recipe.model.family)
    start = init_from(loaded) if recipe.model.init_from else SCRATCH
    if start == SCRATCH:
        tokenizer = recipe_tokenizer(loaded, train_source)
        adapt_tokenizer(tokenizer, needs_mask=role.needs_mask_token(tokenizer))  # adds nothing to textgen's own
        model = scratch_model(loaded, tokenizer)
    else:
        accelerate.utils.set_seed(recipe.train.seed)
        loaded_model = load_pretrained(start, role, needs_mask=True, context=recipe.model.context)
        model, tokenizer = loaded_model.model, loaded_model.tokenizer
        for line in loaded_model.adaptation("pretrain"):
            log(line)

    block_size = role.pretrain_block_size(context_of(model.config) or recipe.model.context)
    started = time.perf_counter()
    train_packed = packed_blocks(train_source, tokenizer, block_size)
    val_packed = packed_blocks(val_source, tokenizer, block_size)
    seconds = time.perf_counter() - started
    how = (
        "cache hit"
        if train_packed.cached and val_packed.cached
        else f"{(train_packed.tokens + val_packed.tokens) / max(seconds, 1e-9):,.0f} tokens/s"
    )
    log(
        f"pretrain: {train_packed.tokens:,} training tokens in {len(train_packed.blocks):,} blocks of {block_size} ({how}, {seconds:.2f} s)"
    )
    if len(val_packed.blocks) == 0:
        raise UserError(
            f"{val_source.path}: the validation text gives {val_packed.tokens} tokens, less than one block of {block_size}; use more text or a smaller model.context"
        )
    train_set, val_set = role.pretrain_sets(train_packed.blocks, val_packed.blocks, tokenizer, model, recipe)
    extra = {
        "block_size": block_size,
        "corpus_tokens": train_packed.tokens,
        "tokenizer_vocab": len(tokenizer),
        "data_prep_s": seconds,
        "data_cache_hit": train_packed.cached,
    }
    if start != SCRATCH:
        extra["init_from"] = start
    return train_stage(
        loaded, "pretrain", model=model, tokenizer=tokenizer, train_set=train_set, val_set=val_set, notes=extra
    )
