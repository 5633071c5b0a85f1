"""Layouts a model can be built in from scratch (`model.arch`), all sized by the same recipe keys.

`bart` and `gpt2` are the defaults of `sora` and `chatgpt` (their builders live in bart.py and
gpt2.py, unchanged); `t5` is a second encoder-decoder layout, `llama` and `qwen2` two more
decoder-only ones (rotary positions, RMSNorm, SwiGLU). Adding a layout means one builder and one
entry in ARCHS. A pretrained checkpoint needs no entry: whatever AutoModelForSeq2SeqLM or
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

    from textgen_cli.schema import ModelSection


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


@dataclass(frozen=True)
class Arch:
    name: str
    family: str  # the role it plays: `sora` (encoder-decoder) or `chatgpt` (decoder-only)
    build: Callable[[ModelSection, PreTrainedTokenizerFast], PreTrainedModel]


ARCHS = {
    "bart": Arch("bart", "sora", build_bart),
    "t5": Arch("t5", "sora", build_t5),
    "gpt2": Arch("gpt2", "chatgpt", build_gpt2),
    "llama": Arch("llama", "chatgpt", build_llama),
    "qwen2": Arch("qwen2", "chatgpt", build_qwen2),
}
