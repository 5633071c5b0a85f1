"""BART from scratch: `sora`'s default layout (encoder-decoder, learned positions, GELU, LayerNorm)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import BartForConditionalGeneration, PreTrainedTokenizerFast

    from textgen_cli.core.schema import ModelSection


def build_bart(section: ModelSection, tokenizer: PreTrainedTokenizerFast) -> BartForConditionalGeneration:
    from transformers import BartConfig, BartForConditionalGeneration

    config = BartConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=section.context,
        d_model=section.hidden,
        encoder_layers=section.layers,
        decoder_layers=section.layers,
        encoder_attention_heads=section.heads,
        decoder_attention_heads=section.heads,
        encoder_ffn_dim=section.ffn,
        decoder_ffn_dim=section.ffn,
        dropout=section.dropout,
        attention_dropout=section.attention_dropout,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        # The decoder starts from bos and its labels are target + eos (see objectives.fit_seq2seq).
        decoder_start_token_id=tokenizer.bos_token_id,
        forced_eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    return BartForConditionalGeneration(config)
