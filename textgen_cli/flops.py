"""Training compute, estimated the same way for both families, so budgets can be matched.

FLOPs per token = 6 x (the parameters that token passes through) + the attention term
12 x layers x context x hidden (QK^T and AV, forward and backward), counted at the full context:

- decoder-only (`chatgpt`): every token passes the decoder blocks and the LM head (V x d, tied or not).
- encoder-decoder (`sora`): an encoder token passes the encoder blocks; a decoder token passes the
  decoder blocks (self- and cross-attention: twice the attention term) and the LM head.

Which parameters are which is the model's role's to say (models/roles.py).

Embedding lookups cost nothing. This is Kaplan et al.'s 6ND with the attention term made explicit.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FlopsModel:
    encoder_params: int  # non-embedding parameters of the encoder blocks (0 for decoder-only)
    decoder_params: int  # non-embedding parameters of the decoder blocks, final norms included
    head_params: int  # vocab x hidden
    layers: int
    hidden: int
    context: int

    def per_encoder_token(self) -> float:
        return 6 * self.encoder_params + 12 * self.layers * self.context * self.hidden

    def per_decoder_token(self) -> float:
        cross = 2 if self.encoder_params else 1
        return 6 * (self.decoder_params + self.head_params) + 12 * self.layers * self.context * self.hidden * cross


def flops_model(model, context: int | None = None) -> FlopsModel:
    """The counts behind the estimate. The attention term is counted at the model's context, capped
    at `context` (the recipe's model.context) when given: a pretrained model's context (32k for
    Qwen2) is far longer than the sequences it is finetuned on here."""
    from textgen_cli.models import context_of, role_of_model

    config = model.config
    embeddings = {
        id(p)
        for module in model.modules()
        if module.__class__.__name__.endswith(("Embedding", "Embeddings"))
        for p in module.parameters()
    }
    enc, dec = role_of_model(model).flops_params(model, embeddings)
    hidden = model.get_input_embeddings().embedding_dim
    own = context_of(config)
    window = min(own, context) if own and context else (own or context or 1024)
    return FlopsModel(
        enc, dec, model.get_input_embeddings().num_embeddings * hidden, config.num_hidden_layers, hidden, window
    )


def step_flops(fm: FlopsModel, encoder_tokens: float, decoder_tokens: float) -> float:
    return fm.per_encoder_token() * encoder_tokens + fm.per_decoder_token() * decoder_tokens


def pretrain_tokens_per_sequence(family, context: int, mask_ratio: float, poisson_lambda: float) -> tuple[float, float]:
    """(encoder, decoder) tokens of one pretraining sequence of `family` (a name or a role): see
    the role's `pretrain_tokens_per_sequence`."""
    from textgen_cli.models import role_for

    return role_for(family).pretrain_tokens_per_sequence(context, mask_ratio, poisson_lambda)


def matched_steps(reference_flops: float, flops_per_step: float) -> int:
    """Steps whose total compute is closest to the reference's (within half a step)."""
    return max(1, int(round(reference_flops / flops_per_step)))
