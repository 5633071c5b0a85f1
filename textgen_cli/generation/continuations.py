"""Scoring continuations after the prompts of a decoding batch, from the key/value cache that
decoding goes on from: the prompts are read once, for the reply and for every scored reference.

`evaluate` scores each reference after its own prompt and after another example's (does the model
read its input?). Scored as separate passes, each re-reads every prompt, and on a 135M-parameter
model the prompts are most of the tokens: three passes cost more than the decoding (issue 25).
Scored from the batch's cache, a reference costs only its own tokens."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class CachedPrompts:
    """A left-padded batch of prompts, read but their last token into `cache` (as
    `Role.prompt_cache` reads them). `nll` never changes the cache: `model.generate` goes on from it."""

    model: torch.nn.Module
    cache: object
    input_ids: torch.Tensor  # (batch, width): the prompts, left-padded
    attention_mask: torch.Tensor

    @property
    def lengths(self) -> list[int]:
        """Each row's prompt length in real tokens."""
        return self.attention_mask.sum(-1).tolist()

    def nll(self, targets: Sequence[list[int]], rows: Sequence[int]) -> list[float]:
        """The summed NLL (nats) of each `targets[j]` right after the prompt of batch row `rows[j]`:
        the prompt's last token and the target (but its last token) are read on top of a copy of
        the cache, causally, at the positions that continue the prompt's."""
        import torch.nn.functional as F

        from textgen_cli.models.decoder_only import cache_argument
        from textgen_cli.objectives import IGNORE_INDEX

        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.input_ids.device)
        width = max(len(t) for t in targets)
        inputs = torch.zeros((len(targets), width), dtype=torch.long)
        labels = torch.full((len(targets), width), IGNORE_INDEX, dtype=torch.long)
        real = torch.zeros((len(targets), width), dtype=torch.long)
        for j, target in enumerate(targets):
            inputs[j, : len(target)] = torch.as_tensor([0, *target[:-1]], dtype=torch.long)
            labels[j, : len(target)] = torch.as_tensor(target, dtype=torch.long)
            real[j, : len(target)] = 1
        inputs = inputs.to(index.device)
        inputs[:, 0] = self.input_ids[index, -1]  # the prompt's last token predicts the target's first
        prefix = self.attention_mask[index, :-1]
        positions = prefix.sum(-1, keepdim=True) + torch.arange(width, device=index.device)[None]
        with torch.inference_mode():
            cache = copy.deepcopy(self.cache)
            if index.tolist() != list(range(self.input_ids.size(0))):
                cache.batch_select_indices(index)
            logits = self.model(
                input_ids=inputs,
                attention_mask=torch.cat([prefix, real.to(index.device)], dim=1),
                position_ids=positions,
                use_cache=True,
                **{cache_argument(self.model): cache},
            ).logits
            losses = F.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)), labels.to(index.device).reshape(-1), reduction="none"
            )
        return losses.view(len(targets), width).sum(-1).tolist()
