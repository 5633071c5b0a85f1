"""Likelihood metrics that compare across model families and tokenizers.

All functions take totals, never means: sum the token negative log-likelihoods (natural log,
i.e. nats; `cross_entropy(..., reduction="sum", ignore_index=-100)`) over the whole evaluation
set and count the predicted tokens (labels != -100) alongside. A mean of per-batch means weights
short batches too heavily and is not what these functions expect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def utf8_bytes(text: str) -> int:
    """Number of UTF-8 bytes of `text` (a curly quote is 3 bytes, not 1 character)."""
    return len(text.encode("utf-8"))


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(total_nll / n_tokens).

    `total_nll`: the SUM over every predicted token of -ln p(token | context), in nats, over the
    whole set (for seq2seq: target tokens only; for decoder-only dialogue: response tokens only,
    context masked with -100). `n_tokens`: the number of those predicted tokens. Depends on the
    tokenizer: compare perplexities only between models that share one; otherwise use
    `bits_per_byte`. Returns inf when the value overflows a float.
    """
    if n_tokens <= 0:
        raise ValueError("perplexity needs n_tokens > 0")
    if total_nll < 0 or math.isnan(total_nll):
        raise ValueError(f"total_nll must be a non-negative sum of token NLLs, got {total_nll}")
    try:
        return math.exp(total_nll / n_tokens)
    except OverflowError:
        return math.inf


def bits_per_byte(total_nll_nats: float, n_bytes: int) -> float:
    """total_nll_nats / (ln 2 * n_bytes), as lm-evaluation-harness defines it.

    `total_nll_nats`: the SUM over every scored token of -ln p(token | context), in nats.
    `n_bytes`: the UTF-8 byte count (`utf8_bytes`) of exactly the text those tokens spell, i.e.
    the decoded scored span (the target or response, not the masked context). Count the same span
    for every model being compared, and say whether the EOS token's NLL is included (EOS spells no
    bytes, so including it adds to the numerator only). Tokenizer-independent, so it compares
    models with different vocabularies.
    """
    if n_bytes <= 0:
        raise ValueError("bits_per_byte needs n_bytes > 0")
    if total_nll_nats < 0 or math.isnan(total_nll_nats):
        raise ValueError(f"total_nll_nats must be a non-negative sum of token NLLs, got {total_nll_nats}")
    return total_nll_nats / (math.log(2) * n_bytes)


@dataclass
class LikelihoodTotals:
    """Running totals for one evaluation pass: call `add` once per batch with that batch's SUMMED
    token NLL (nats), its number of predicted tokens, and the UTF-8 bytes of its scored text."""

    nll: float = 0.0
    tokens: int = 0
    bytes: int = 0

    def add(self, nll_sum: float, n_tokens: int, n_bytes: int = 0) -> None:
        self.nll += float(nll_sum)
        self.tokens += int(n_tokens)
        self.bytes += int(n_bytes)

    def result(self) -> dict:
        out = {
            "nll_sum": self.nll,
            "tokens": self.tokens,
            "nll_per_token": self.nll / self.tokens if self.tokens else None,
            "perplexity": perplexity(self.nll, self.tokens) if self.tokens else None,
        }
        if self.bytes:
            out["bytes"] = self.bytes
            out["bits_per_byte"] = bits_per_byte(self.nll, self.bytes)
        return out
