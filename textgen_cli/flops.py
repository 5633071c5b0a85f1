"""Training compute, estimated the same way for both families, so budgets can be matched.

FLOPs per token = 6 x (the parameters that token passes through) + the attention term
12 x layers x context x hidden (QK^T and AV, forward and backward), counted at the full context:

- `chatgpt`: every token passes the decoder blocks and the LM head (V x d, tied or not).
- `sora`: an encoder token passes the encoder blocks; a decoder token passes the decoder blocks
  (self- and cross-attention: twice the attention term) and the LM head.

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


def flops_model(model) -> FlopsModel:
    config = model.config
    embeddings = {id(p) for module in model.modules() if module.__class__.__name__.endswith(("Embedding", "Embeddings")) for p in module.parameters()}
    if config.is_encoder_decoder:
        encoder = model.get_encoder()
        decoder = model.get_decoder()
        enc = sum(p.numel() for p in encoder.parameters() if id(p) not in embeddings)
        dec = sum(p.numel() for p in decoder.parameters() if id(p) not in embeddings)
        layers = config.encoder_layers
    else:
        enc = 0
        dec = sum(p.numel() for p in model.parameters() if id(p) not in embeddings)
        layers = config.num_hidden_layers
    hidden = model.get_input_embeddings().embedding_dim
    return FlopsModel(enc, dec, model.get_input_embeddings().num_embeddings * hidden, layers, hidden, config.max_position_embeddings)


def step_flops(fm: FlopsModel, encoder_tokens: float, decoder_tokens: float) -> float:
    return fm.per_encoder_token() * encoder_tokens + fm.per_decoder_token() * decoder_tokens


def pretrain_tokens_per_sequence(family: str, context: int, mask_ratio: float, poisson_lambda: float) -> tuple[float, float]:
    """(encoder, decoder) tokens of one pretraining sequence.

    `chatgpt`: a full packed block. `sora`: bos + the noised block + eos in the encoder (each masked
    span of mean length ~lambda collapses to one <mask>), the block + eos in the decoder."""
    if family == "chatgpt":
        return 0.0, float(context)
    block = context - 2
    encoder = block * (1 - mask_ratio + mask_ratio / max(poisson_lambda, 1.0)) + 2
    return encoder, float(block + 1)


def matched_steps(reference_flops: float, flops_per_step: float) -> int:
    """Steps whose total compute is closest to the reference's (within half a step)."""
    return max(1, int(round(reference_flops / flops_per_step)))
