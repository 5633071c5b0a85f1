"""Tiny random checkpoints that textgen did not write: six architectures, each saved with
`save_pretrained` beside a tokenizer of its own kind (its own special tokens, no pad token, no chat
template), and one decoder-only checkpoint whose tokenizer brings a chat template (Qwen style).

T5 keeps its pad token, as every real T5 tokenizer does (its decoder starts from pad), and has
T5's sentinels <extra_id_0..9>."""

from __future__ import annotations

from pathlib import Path

# name -> (family, special tokens of its tokenizer)
SPECIALS = {
    "gpt2": ("chatgpt", {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}),
    "llama": ("chatgpt", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
    "qwen2": ("chatgpt", {"eos_token": "<|endoftext|>"}),
    "gpt_neox": ("chatgpt", {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}),
    "t5": ("sora", {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}),
    "bart": ("sora", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "mask_token": "<mask>"}),
}
ARCHITECTURES = tuple(SPECIALS)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer(texts: list[str], specials: dict[str, str], extra: list[str] = (), vocab_size: int = 320):
    """A byte-level BPE tokenizer with exactly these special tokens (T5's first: pad is id 0)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    ordered = list(
        dict.fromkeys(
            [specials[k] for k in ("pad_token", "eos_token", "unk_token", "bos_token", "mask_token") if k in specials]
            + list(extra)
        )
    )
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=ordered,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, clean_up_tokenization_spaces=False, **specials)
    if extra:
        tokenizer.add_special_tokens({"extra_special_tokens": list(extra)}, replace_extra_special_tokens=False)
    return tokenizer


def tiny_model(arch: str, tokenizer):
    import torch
    import transformers as t

    torch.manual_seed(0)
    ids = {name: getattr(tokenizer, name) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
    v = len(tokenizer)
    if arch == "gpt2":
        return t.GPT2LMHeadModel(t.GPT2Config(vocab_size=v, n_positions=128, n_embd=32, n_layer=1, n_head=2, **ids))
    if arch == "llama":
        config = t.LlamaConfig(
            vocab_size=v,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=128,
            tie_word_embeddings=False,
            **ids,
        )
        return t.LlamaForCausalLM(config)
    if arch == "qwen2":
        config = t.Qwen2Config(
            vocab_size=v,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=128,
            tie_word_embeddings=True,
            **ids,
        )
        return t.Qwen2ForCausalLM(config)
    if arch == "gpt_neox":
        config = t.GPTNeoXConfig(
            vocab_size=v,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=128,
            **ids,
        )
        return t.GPTNeoXForCausalLM(config)
    if arch == "t5":
        config = t.T5Config(
            vocab_size=v,
            d_model=32,
            d_kv=16,
            d_ff=64,
            num_layers=1,
            num_heads=2,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
            decoder_start_token_id=tokenizer.pad_token_id,
            **ids,
        )
        return t.T5ForConditionalGeneration(config)
    if arch == "bart":
        config = t.BartConfig(
            vocab_size=v,
            d_model=32,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            max_position_embeddings=128,
            decoder_start_token_id=tokenizer.eos_token_id,
            forced_eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.unk_token_id,
        )
        return t.BartForConditionalGeneration(config)
    raise ValueError(arch)


def save_checkpoint(root: Path, arch: str, texts: list[str], chat: bool = False) -> Path:
    """A tiny `arch` checkpoint with its own tokenizer in root/<name>; `chat`: a Qwen-style chat
    template and <|im_end|> as eos."""
    family, specials = SPECIALS[arch]
    specials = dict(specials)
    extra = [f"<extra_id_{i}>" for i in range(10)] if arch == "t5" else []
    if chat:
        specials["eos_token"] = "<|im_end|>"
        extra = ["<|endoftext|>", "<|im_start|>"]  # Qwen keeps <|endoftext|> in its vocabulary
    tokenizer = tiny_tokenizer(texts, specials, extra)
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    path = root / (f"{arch}-chat" if chat else arch)
    tiny_model(arch, tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
