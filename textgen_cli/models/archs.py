"""Layouts a model can be built in from scratch (`model.arch`), all sized by the same recipe keys.

`bart` and `gpt2` are the defaults of `sora` and `chatgpt` (their builders live in bart.py and
gpt2.py, unchanged); `t5` is a second encoder-decoder layout, `llama` and `qwen2` two more
decoder-only ones (rotary positions, RMSNorm, SwiGLU).

`t5gemma` (encoder-decoder) and `gemma2` (decoder-only) are the matched pair of the controlled
comparison: both are built from the same Gemma 2 block (rotary positions, RMSNorm before and after
each sub-layer, GeGLU), with every option that could differ set the same on both sides
(`gemma_block`). The encoder-decoder's decoder block is the decoder-only block plus
cross-attention, and nothing else (tests/test_matched_layouts.py checks it, weights included).

Adding a layout means one builder and one entry in ARCHS (its LoRA targets included). A pretrained checkpoint needs no entry: whatever AutoModelForSeq2SeqLM or
AutoModelForCausalLM loads can be finetuned (see loading.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from textgen_cli.models.bart import build_bart
from textgen_cli.models.gpt2 import build_gpt2

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

    from textgen_cli.core.schema import ModelSection


def build_t5(section: ModelSection, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    """T5 (v1.1 style, gated GELU): relative position buckets, so T5 has no context field; textgen
    records `model.context` as `n_positions`. The decoder starts from bos, as textgen's BART does."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=section.hidden,
        d_kv=section.hidden // section.heads,
        d_ff=section.ffn,
        num_layers=section.layers,
        num_decoder_layers=section.layers,
        num_heads=section.heads,
        dropout_rate=section.dropout,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        decoder_start_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
        n_positions=section.context,  # not T5's own field: where textgen reads the context back from
    )
    return T5ForConditionalGeneration(config)


def _llama_like(config_class, model_class, section: ModelSection, tokenizer: PreTrainedTokenizerFast, **extra):
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=section.hidden,
        intermediate_size=section.ffn,
        num_hidden_layers=section.layers,
        num_attention_heads=section.heads,
        num_key_value_heads=section.heads,
        max_position_embeddings=section.context,
        attention_dropout=section.attention_dropout,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        **extra,
    )
    return model_class(config)


def build_llama(section: ModelSection, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    return _llama_like(LlamaConfig, LlamaForCausalLM, section, tokenizer)


def build_qwen2(section: ModelSection, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return _llama_like(Qwen2Config, Qwen2ForCausalLM, section, tokenizer, use_sliding_window=False)


def gemma_block(section: ModelSection, tokenizer: PreTrainedTokenizerFast, layers: int) -> dict:
    """The Gemma 2 block settings both matched layouts share. Gemma 2's own defaults that would make
    the two sides differ, or that do not fit a model this small, are switched off on both: logit
    soft-capping (attention and output), sliding windows (every layer attends over the whole
    context), and the fixed 1/sqrt(256) query scale (the head size's, as in every other layout).
    Gemma 2's block has no hidden dropout, so neither side gets one (T5Gemma's `dropout_rate` is
    0); attention dropout is `model.attention_dropout` on both."""
    head_dim = section.hidden // section.heads
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=section.hidden,
        intermediate_size=section.ffn,
        num_hidden_layers=layers,
        num_attention_heads=section.heads,
        num_key_value_heads=section.heads,
        head_dim=head_dim,
        hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=section.context,
        attention_dropout=section.attention_dropout,
        query_pre_attn_scalar=head_dim,
        sliding_window=section.context,
        layer_types=["full_attention"] * layers,
        attn_logit_softcapping=None,
        final_logit_softcapping=None,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )


def build_t5gemma(section: ModelSection, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    """T5Gemma: an encoder and a decoder of `model.layers` Gemma 2 blocks each (the decoder's add
    cross-attention). The decoder's embeddings are tied to the output layer, as Gemma 2's are; the
    encoder has its own table (T5Gemma does not share it), so the two layouts' total parameters
    differ by one vocab x hidden table and their non-embedding parameters do not differ."""
    from transformers import T5GemmaConfig, T5GemmaForConditionalGeneration, T5GemmaModuleConfig

    block = gemma_block(section, tokenizer, section.layers)
    config = T5GemmaConfig(
        encoder=T5GemmaModuleConfig(**block),
        decoder=T5GemmaModuleConfig(**block),
        dropout_rate=0.0,
        attention_dropout=section.attention_dropout,
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.bos_token_id,
        n_positions=section.context,  # not T5Gemma's own field: where textgen reads the context back from
    )
    return T5GemmaForConditionalGeneration(config)


def build_gemma2(section: ModelSection, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    """Gemma 2, decoder-only: `model.layers` blocks, the same block as `t5gemma`'s."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    return Gemma2ForCausalLM(Gemma2Config(**gemma_block(section, tokenizer, section.layers)))


@dataclass(frozen=True)
class Arch:
    name: str  # `model.arch`, and the transformers `model_type` of what it builds
    family: str  # the role it plays: `sora` (encoder-decoder) or `chatgpt` (decoder-only)
    build: Callable[[ModelSection, PreTrainedTokenizerFast], PreTrainedModel]
    # LoRA's default targets (model.lora.target_modules): every attention and feed-forward
    # projection, where peft's own table adapts only the attention's query and value
    lora_targets: tuple[str, ...]


PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # Llama-style names

ARCHS = {
    "bart": Arch("bart", "sora", build_bart, ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")),
    "t5": Arch("t5", "sora", build_t5, ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo")),
    "gpt2": Arch("gpt2", "chatgpt", build_gpt2, ("c_attn", "c_proj", "c_fc")),
    "llama": Arch("llama", "chatgpt", build_llama, PROJECTIONS),
    "qwen2": Arch("qwen2", "chatgpt", build_qwen2, PROJECTIONS),
    "t5gemma": Arch("t5gemma", "sora", build_t5gemma, PROJECTIONS),
    "gemma2": Arch("gemma2", "chatgpt", build_gemma2, PROJECTIONS),
}
