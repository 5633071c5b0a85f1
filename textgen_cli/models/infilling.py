"""Encoder-decoder pretraining: BART text infilling, or T5 span corruption for T5 tokenizers.

Both draw the same seeded spans (objectives.infilling_mask). BART replaces each span by one <mask>
and the decoder rebuilds the whole block; T5 replaces the k-th span by its sentinel <extra_id_k>
and the decoder writes only the spans, each after its sentinel (the objective T5 was pretrained
with, so a pretrained T5 continues the task it knows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from textgen_cli.objectives import InfillingBlocks, infilling_mask, seq2seq_batch

if TYPE_CHECKING:
    import torch

    from textgen_cli.core.schema import Recipe

SENTINEL = "<extra_id_{}>"


def sentinel_ids(tokenizer) -> list[int]:
    """T5's sentinel ids, <extra_id_0> first; empty when the tokenizer has none."""
    vocab = tokenizer.get_vocab()
    ids = []
    while SENTINEL.format(len(ids)) in vocab:
        ids.append(vocab[SENTINEL.format(len(ids))])
    return ids


@dataclass
class StartedInfilling(InfillingBlocks):
    """BART text infilling whose decoder starts from the model's decoder start token."""

    start_id: int = 0

    def collate(self, indices: Sequence[int], epoch: int) -> dict[str, torch.Tensor]:
        return seq2seq_batch([self.example(i, epoch) for i in indices], self.pad_id, self.start_id)


@dataclass
class SentinelInfilling(StartedInfilling):
    """T5 span corruption: source = the block with its k-th span replaced by sentinel k, then eos;
    target = sentinel k followed by span k, for every span, then eos. Spans beyond the last
    sentinel stay in the source unmasked."""

    sentinels: tuple[int, ...] = ()

    def example(self, index: int, epoch: int) -> tuple[list[int], list[int]]:
        rng = np.random.default_rng([self.seed, epoch, index])
        block = np.asarray(self.blocks[index], dtype=np.int64).tolist()
        masked = infilling_mask(len(block), self.mask_ratio, self.poisson_lambda, rng).tolist()
        source: list[int] = []
        target: list[int] = []
        span = -1
        for position, (token, is_masked) in enumerate(zip(block, masked)):
            starts = is_masked and (position == 0 or not masked[position - 1])
            if starts:
                span += 1
            if is_masked and span < len(self.sentinels):
                if starts:
                    source.append(self.sentinels[span])
                    target.append(self.sentinels[span])
                target.append(token)
            else:
                source.append(token)
        return [*source, self.eos_id], [*target, self.eos_id]


def infilling_sets(train_blocks, val_blocks, tokenizer, start_id: int, recipe: Recipe) -> tuple[Any, Any]:
    from textgen_cli.data.tokenizer import MASK

    p = recipe.pretrain
    ids = dict(
        bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, start_id=start_id
    )
    sentinels = sentinel_ids(tokenizer)
    if sentinels:

        def make(blocks, seed):
            return SentinelInfilling(
                blocks, p.mask_ratio, p.poisson_lambda, seed, mask_id=-1, sentinels=tuple(sentinels), **ids
            )
    else:
        mask_id = tokenizer.convert_tokens_to_ids(tokenizer.mask_token or MASK)

        def make(blocks, seed):
            return StartedInfilling(blocks, p.mask_ratio, p.poisson_lambda, seed, mask_id=mask_id, **ids)

    # validation noise uses a fixed seed so every validation pass scores the same inputs
    return make(train_blocks, recipe.train.seed), make(val_blocks, 0)
