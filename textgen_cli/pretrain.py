"""`textgen pretrain`: a tokenizer and a model from scratch on the recipe's prose corpus.

`chatgpt` learns causal LM on packed blocks; `sora` learns BART text infilling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textgen_cli.errors import UserError
from textgen_cli.data import read_finetune_examples, read_texts
from textgen_cli.models import FAMILIES, load_checkpoint
from textgen_cli.objectives import CausalBlocks, InfillingBlocks, encode_texts, pack_blocks
from textgen_cli.progress import log
from textgen_cli.recipe import LoadedRecipe
from textgen_cli.tokenizer import MASK, get_tokenizer, load_tokenizer
from textgen_cli.train import train_stage

HOLDOUT_FRACTION = 0.05  # validation taken from the end of the corpus when the recipe names none


def tokenizer_corpus(loaded: LoadedRecipe, train_texts: list[str]) -> list[str]:
    """The pretraining text, plus the finetune training split when the recipe asks for it."""
    recipe = loaded.recipe
    texts = list(train_texts)
    finetune = recipe.data.finetune
    if recipe.tokenizer.include_finetune_data and finetune.train:
        for dialogue in read_finetune_examples(finetune, "train", recipe.data.max_examples):
            texts.extend(turn["content"] for turn in dialogue.messages)
    return texts


def run_pretrain(loaded: LoadedRecipe) -> dict[str, Any]:
    import accelerate

    recipe = loaded.recipe
    data = recipe.data.pretrain
    if not data.train:
        raise UserError(f"{loaded.path}: key 'data.pretrain.train' is required to pretrain")
    texts = read_texts(data.train, data.text_field, recipe.data.max_examples)
    if data.validation:
        val_texts = read_texts(data.validation, data.text_field, recipe.data.max_examples)
    else:
        cut = max(1, int(len(texts) * HOLDOUT_FRACTION))
        texts, val_texts = texts[:-cut], texts[-cut:]
        log(f"pretrain: no data.pretrain.validation; holding out the last {cut} records")

    if recipe.model.init_from:
        tokenizer = load_tokenizer(Path(recipe.model.init_from))
    else:
        tokenizer = get_tokenizer(tokenizer_corpus(loaded, texts), recipe.tokenizer, log=log)

    accelerate.utils.set_seed(recipe.train.seed)  # the model's initial weights depend on it
    family = FAMILIES[recipe.model.family]
    if recipe.model.init_from:
        model = load_checkpoint(Path(recipe.model.init_from), family.name, len(tokenizer))
    else:
        model = family.build(recipe.model, tokenizer)

    context = model.config.max_position_embeddings
    # sora: bos + noised block + eos must fit the encoder, block + eos the decoder.
    block_size = context - 2 if family.is_encoder_decoder else context
    train_ids, val_ids = encode_texts(tokenizer, texts), encode_texts(tokenizer, val_texts)
    train_blocks = pack_blocks(train_ids, block_size, tokenizer.eos_token_id)
    val_blocks = pack_blocks(val_ids, block_size, tokenizer.eos_token_id)
    if family.is_encoder_decoder:
        p = recipe.pretrain
        ids = dict(bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, mask_id=tokenizer.convert_tokens_to_ids(MASK))
        train_set = InfillingBlocks(train_blocks, p.mask_ratio, p.poisson_lambda, recipe.train.seed, **ids)
        # validation noise uses a fixed seed so every validation pass scores the same inputs
        val_set = InfillingBlocks(val_blocks, p.mask_ratio, p.poisson_lambda, 0, **ids)
    else:
        train_set, val_set = CausalBlocks(train_blocks), CausalBlocks(val_blocks)
    extra = {"block_size": block_size, "corpus_tokens": int(sum(map(len, train_ids))), "tokenizer_vocab": len(tokenizer)}
    return train_stage(loaded, "pretrain", model, tokenizer, train_set, val_set, extra)
