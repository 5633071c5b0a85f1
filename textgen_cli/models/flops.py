"""Training compute, counted the same way for every layout, so budgets can be matched and swept.

Per sequence, forward and backward (Kaplan et al.'s 6ND with the attention term made explicit):

- dense: 6 x (the non-embedding parameters a token passes through) per token; an encoder token
  passes the encoder blocks, a decoder token the decoder blocks and the LM head (vocab x hidden,
  tied or not). A decoder-only model has only a decoder: every token of the sequence passes it.
- attention scores: 12 x hidden x (query positions x key positions) per layer (QK^T and AV,
  2 FLOPs a multiply-add, x3 for the backward pass), at the sequence's ACTUAL lengths: an encoder
  of n_enc tokens pays n_enc^2 a layer, a decoder of n_dec tokens n_dec^2 for self-attention and
  n_dec x n_enc for cross-attention. Padding is not counted.

Which parameters are which is the model's role's to say (models/roles.py); how deep each stack
is comes from the model's own blocks. Embedding lookups cost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class FlopsModel:
    encoder_params: int  # non-embedding parameters of the encoder blocks (0 for decoder-only)
    decoder_params: int  # non-embedding parameters of the decoder blocks, final norms included
    head_params: int  # vocab x hidden
    encoder_layers: int  # 0 for decoder-only
    decoder_layers: int
    hidden: int

    def flops(self, lengths: Lengths) -> float:
        dense = (
            6 * self.encoder_params * lengths.encoder + 6 * (self.decoder_params + self.head_params) * lengths.decoder
        )
        scores = self.encoder_layers * lengths.encoder_sq + self.decoder_layers * (lengths.decoder_sq + lengths.cross)
        return dense + 12 * self.hidden * scores


@dataclass
class Lengths:
    """Sums over a set of sequences of what their compute depends on: tokens in the encoder and in
    the decoder, and the products of lengths that attention pays for."""

    encoder: float = 0.0
    decoder: float = 0.0
    encoder_sq: float = 0.0  # sum of n_enc^2
    decoder_sq: float = 0.0  # sum of n_dec^2
    cross: float = 0.0  # sum of n_enc x n_dec

    @classmethod
    def of_sequence(cls, encoder: float, decoder: float, count: float = 1.0) -> Lengths:
        """`count` sequences of the same lengths."""
        return cls(count * encoder, count * decoder, count * encoder**2, count * decoder**2, count * encoder * decoder)

    def __add__(self, other: Lengths) -> Lengths:
        return Lengths(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def scaled(self, factor: float) -> Lengths:
        return Lengths(*(getattr(self, f.name) * factor for f in fields(self)))

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def stack_depths(model) -> tuple[int, int]:
    """(encoder, decoder) blocks: the model's repeated layers (`_no_split_modules`), counted in its
    encoder and in the rest."""
    from textgen_cli.models import role_of_model, transformer_blocks

    blocks = transformer_blocks(model)
    encoder = role_of_model(model).encoder_of(model)
    in_encoder = {id(m) for m in encoder.modules()} if encoder is not None else set()
    n_encoder = sum(1 for block in blocks if id(block) in in_encoder)
    return n_encoder, len(blocks) - n_encoder


def flops_model(model) -> FlopsModel:
    """The counts behind the FLOPs of `model` (random or trained, any layout textgen loads)."""
    from textgen_cli.models import role_of_model

    embeddings = {
        id(p)
        for module in model.modules()
        if module.__class__.__name__.endswith(("Embedding", "Embeddings"))
        for p in module.parameters()
    }
    enc, dec = role_of_model(model).flops_params(model, embeddings)
    hidden = model.get_input_embeddings().embedding_dim
    encoder_layers, decoder_layers = stack_depths(model)
    return FlopsModel(
        enc, dec, model.get_input_embeddings().num_embeddings * hidden, encoder_layers, decoder_layers, hidden
    )


def pretrain_tokens_per_sequence(family, context: int, mask_ratio: float, poisson_lambda: float) -> tuple[float, float]:
    """(encoder, decoder) tokens of one pretraining sequence of `family` (a name or a role): see
    the role's `pretrain_tokens_per_sequence`."""
    from textgen_cli.models import role_for

    return role_for(family).pretrain_tokens_per_sequence(context, mask_ratio, poisson_lambda)


def matched_steps(reference_flops: float, flops_per_step: float) -> int:
    """Steps whose total compute is closest to the reference's (within half a step)."""
    return max(1, int(round(reference_flops / flops_per_step)))
