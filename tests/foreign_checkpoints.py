"""Tiny random checkpoints that textgen did not write: six architectures, each saved with
`save_pretrained` beside a tokenizer of its own kind (its own special tokens, no pad token, no chat
template), and one decoder-only checkpoint whose tokenizer brings a chat template (Qwen style).

T5 keeps its pad token, as every real T5 tokenizer does (its decoder starts from pad), and has
T5's sentinels <extra_id_0..9>."""

from __future__ import annotations

import json
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


# GGUF tensor names of a Llama layer, as llama.cpp writes them (HF name suffix -> GGUF name suffix)
GGUF_LLAMA_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _rope_permute(weight, heads: int):
    """llama.cpp's reordering of the q / k rows for its rotary layout (transformers undoes it on load)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def save_gguf(path: Path, texts: list[str], quant: str = "Q8_0", raw_types: dict[str, str] | None = None):
    """A tiny Llama written as a GGUF file the way llama.cpp's converter writes one: its config and a
    byte-level BPE tokenizer (Qwen-style chat template, <|im_end|> as eos) as metadata, the matrices
    quantized to `quant` with the gguf package, the norms in F32. `raw_types`: GGUF tensor name ->
    a type written as raw zero bytes (a type the gguf package cannot write, e.g. Q8_K).

    Returns the model as transformers builds it, with the weights the file holds once dequantized
    (what textgen must load), and the tokenizer."""
    import gguf
    import numpy as np
    import torch

    specials = {"eos_token": "<|im_end|>", "bos_token": "<|im_start|>", "unk_token": "<|endoftext|>"}
    tokenizer = tiny_tokenizer(texts, specials)
    tokenizer.chat_template = CHAT_TEMPLATE
    model = tiny_model("llama", tokenizer)
    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(config.hidden_size // heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    special_ids = set(tokenizer.all_special_ids)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([gguf.TokenType.CONTROL if i in special_ids else gguf.TokenType.NORMAL for _, i in vocab])
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([" ".join(merge) if isinstance(merge, list) else merge for merge in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_unk_token_id(tokenizer.unk_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    names["lm_head.weight"] = "output.weight"
    for layer in range(config.num_hidden_layers):
        for hf, ours in GGUF_LLAMA_LAYER.items():
            names[f"model.layers.{layer}.{hf}"] = f"blk.{layer}.{ours}"
    qtype = gguf.GGMLQuantizationType[quant]
    stored = {}
    for hf_name, tensor in model.state_dict().items():
        name = names[hf_name]
        weight = tensor.numpy().astype(np.float32)
        if ".attn_q." in name:
            weight = _rope_permute(weight, heads)
        elif ".attn_k." in name:
            weight = _rope_permute(weight, kv_heads)
        if name in (raw_types or {}):
            raw = gguf.GGMLQuantizationType[raw_types[name]]
            block, size = gguf.GGML_QUANT_SIZES[raw]
            data = np.zeros((weight.shape[0], weight.shape[1] // block * size), dtype=np.uint8)
            writer.add_tensor(name, data, raw_dtype=raw)
            stored[hf_name] = tensor  # the file holds no weights textgen could read
            continue
        if weight.ndim == 2:
            data = gguf.quants.quantize(weight, qtype)
            writer.add_tensor(name, data, raw_dtype=qtype)
            weight = gguf.quants.dequantize(data, qtype)
        else:
            writer.add_tensor(name, weight)
        # what the file holds, back in transformers' layout
        if ".attn_q." in name or ".attn_k." in name:
            n = heads if ".attn_q." in name else kv_heads
            weight = (
                weight.reshape(n, weight.shape[0] // n // 2, 2, *weight.shape[1:]).swapaxes(2, 1).reshape(weight.shape)
            )
        stored[hf_name] = torch.from_numpy(np.ascontiguousarray(weight))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    model.load_state_dict(stored)
    return model.eval(), tokenizer
