"""`textgen pretrain`: a tokenizer and a model from scratch on the recipe's prose corpus.

`chatgpt` learns causal LM on packed blocks; `sora` learns BART text infilling.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from textgen_cli.errors import UserError
from textgen_cli.data import read_finetune_examples
from textgen_cli.models import FAMILIES, init_from_dir, load_checkpoint
from textgen_cli.objectives import CausalBlocks, InfillingBlocks
from textgen_cli.packing import TextSource, packed_blocks, split_sources
from textgen_cli.progress import log
from textgen_cli.recipe import LoadedRecipe
from textgen_cli.runs import reset_peak_memory
from textgen_cli.tokenizer import MASK, Corpus, get_tokenizer, load_tokenizer, texts_corpus
from textgen_cli.train import train_stage

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


def run_pretrain(loaded: LoadedRecipe) -> dict[str, Any]:
    import accelerate

    recipe = loaded.recipe
    data = recipe.data.pretrain
    reset_peak_memory()  # the stage's own peak, data preparation included
    if not data.train:
        raise UserError(f"{loaded.path}: key 'data.pretrain.train' is required to pretrain")
    train_source, val_source, held_out = split_sources(data.train, data.text_field, recipe.data.max_examples, data.validation, HOLDOUT_FRACTION)
    if held_out:
        log(f"pretrain: no data.pretrain.validation; holding out the last {held_out} records")

    if recipe.model.init_from:
        tokenizer = load_tokenizer(init_from_dir(loaded))
    else:
        tokenizer = get_tokenizer(tokenizer_corpus(loaded, train_source), recipe.tokenizer, log=log)

    accelerate.utils.set_seed(recipe.train.seed)  # the model's initial weights depend on it
    family = FAMILIES[recipe.model.family]
    if recipe.model.init_from:
        model = load_checkpoint(Path(recipe.model.init_from), family.name, len(tokenizer))
    else:
        model = family.build(recipe.model, tokenizer)

    context = model.config.max_position_embeddings
    # sora: bos + noised block + eos must fit the encoder, block + eos the decoder.
    block_size = context - 2 if family.is_encoder_decoder else context
    started = time.perf_counter()
    train_packed = packed_blocks(train_source, tokenizer, block_size)
    val_packed = packed_blocks(val_source, tokenizer, block_size)
    seconds = time.perf_counter() - started
    how = "cache hit" if train_packed.cached and val_packed.cached else f"{(train_packed.tokens + val_packed.tokens) / max(seconds, 1e-9):,.0f} tokens/s"
    log(f"pretrain: {train_packed.tokens:,} training tokens in {len(train_packed.blocks):,} blocks of {block_size} ({how}, {seconds:.2f} s)")
    if len(val_packed.blocks) == 0:
        raise UserError(f"{val_source.path}: the validation text gives {val_packed.tokens} tokens, less than one block of {block_size}; use more text or a smaller model.context")
    if family.is_encoder_decoder:
        p = recipe.pretrain
        ids = dict(bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, mask_id=tokenizer.convert_tokens_to_ids(MASK))
        train_set = InfillingBlocks(train_packed.blocks, p.mask_ratio, p.poisson_lambda, recipe.train.seed, **ids)
        # validation noise uses a fixed seed so every validation pass scores the same inputs
        val_set = InfillingBlocks(val_packed.blocks, p.mask_ratio, p.poisson_lambda, 0, **ids)
    else:
        train_set, val_set = CausalBlocks(train_packed.blocks), CausalBlocks(val_packed.blocks)
    extra = {"block_size": block_size, "corpus_tokens": train_packed.tokens, "tokenizer_vocab": len(tokenizer), "data_prep_s": seconds, "data_cache_hit": train_packed.cached}
    return train_stage(loaded, "pretrain", model, tokenizer, train_set, val_set, extra)
