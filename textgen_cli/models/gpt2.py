"""GPT-2 from scratch: `chatgpt`'s default layout (decoder-only).

GPT-2 rather than Llama because its blocks match BART's (learned positions, GELU, LayerNorm, the
same dropout: `model.dropout` on embeddings and block outputs, `model.attention_dropout` on the
attention probabilities): a `sora` vs `chatgpt` comparison then measures encoder-decoder against
decoder-only, not two different block designs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    from textgen_cli.core.schema import ModelSection


def build_gpt2(section: ModelSection, tokenizer: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=section.context,
        n_embd=section.hidden,
        n_layer=section.layers,
        n_head=section.heads,
        n_inner=section.ffn,
        resid_pdrop=section.dropout,
        embd_pdrop=section.dropout,
        attn_pdrop=section.attention_dropout,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        # GPT-2's tanh GELU in one fused kernel: `gelu_new` computes the same function in ~8 elementwise ops
        activation_function="gelu_pytorch_tanh",
    )
    return GPT2LMHeadModel(config)
