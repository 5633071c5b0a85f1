"""The matched pair of the controlled comparison (`t5gemma` / `gemma2`): one block type on both sides.

The claim checked here is the one the comparison rests on: the encoder-decoder's decoder is the
decoder-only model plus cross-attention, and nothing else. Module types, parameter shapes and block
settings are compared, and then the strongest form: the decoder-only model's weights copied into the
encoder-decoder's decoder, with the cross-attention's output projection zeroed, give the same logits.
"""

from __future__ import annotations

import pytest
import torch

from harness import SHIPPED
from textgen_cli.core.schema import ModelSection
from textgen_cli.models import role_for

# T5Gemma's name of a decoder sub-module -> Gemma 2's name of the same sub-module
GEMMA2_NAME = {"pre_self_attn_layernorm": "input_layernorm", "post_self_attn_layernorm": "post_attention_layernorm"}
CROSS_ATTENTION = ("cross_attn", "pre_cross_attn_layernorm", "post_cross_attn_layernorm")


class Vocab:
    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def __len__(self) -> int:
        return 300


def build_pair(layers: int = 2, **sizes):
    section = dict(hidden=32, heads=4, ffn=64, context=48, attention_dropout=0.1, **sizes)
    encoder_decoder = role_for("sora").build(
        ModelSection(family="sora", arch="t5gemma", layers=layers, **section), Vocab()
    )
    decoder_only = role_for("chatgpt").build(
        ModelSection(family="chatgpt", arch="gemma2", layers=layers, **section), Vocab()
    )
    return encoder_decoder, decoder_only


def block_layout(block, rename: dict[str, str] | None = None) -> dict[str, tuple[str, tuple]]:
    """Every sub-module and parameter of a block: name -> (type without the model's prefix, shape).
    Left out: cross-attention, and dropout modules that drop nothing (T5Gemma keeps them at p=0)."""
    rename = rename or {}
    layout = {}
    for name, module in block.named_modules():
        if not name or name.split(".")[0] in CROSS_ATTENTION:
            continue
        if isinstance(module, torch.nn.Dropout):
            assert module.p == 0.0, name
            continue
        top, _, rest = name.partition(".")
        key = ".".join(filter(None, (rename.get(top, top), rest)))
        kind = type(module).__name__.removeprefix("T5Gemma").removeprefix("Gemma2")
        shapes = tuple((p, tuple(t.shape)) for p, t in module.named_parameters(recurse=False))
        layout[key] = (kind.replace("SelfAttention", "Attention"), shapes)
    return layout


def test_the_decoder_block_of_one_is_the_block_of_the_other_plus_cross_attention():
    encoder_decoder, decoder_only = build_pair()
    decoder_block = encoder_decoder.model.decoder.layers[0]
    block = decoder_only.model.layers[0]
    assert block_layout(decoder_block, GEMMA2_NAME) == block_layout(block)
    extra = {name for name, _ in decoder_block.named_children()} - {name for name, _ in block.named_children()}
    assert extra == set(GEMMA2_NAME) | set(CROSS_ATTENTION) | {"dropout"}  # renamed norms, cross-attention, p=0
    # and the encoder's block is the same block without cross-attention
    assert block_layout(encoder_decoder.model.encoder.layers[0], GEMMA2_NAME) == block_layout(block)


def test_the_block_settings_are_the_same_on_both_sides():
    encoder_decoder, decoder_only = build_pair()
    settings = (
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "hidden_activation",
        "query_pre_attn_scalar",
        "attn_logit_softcapping",
        "final_logit_softcapping",
        "sliding_window",
        "layer_types",
        "attention_dropout",
        "initializer_range",
        "rms_norm_eps",
        "rope_parameters",
        "tie_word_embeddings",
    )
    a, b = encoder_decoder.config.decoder, decoder_only.config
    assert {k: getattr(a, k) for k in settings} == {k: getattr(b, k) for k in settings}
    assert {k: getattr(encoder_decoder.config.encoder, k) for k in settings} == {k: getattr(b, k) for k in settings}
    assert a.attn_logit_softcapping is None and a.sliding_window == 48 and set(a.layer_types) == {"full_attention"}
    assert a.attention_dropout == 0.1  # model.attention_dropout on both sides
    assert encoder_decoder.config._attn_implementation == decoder_only.config._attn_implementation  # same kernel
    # initialisation: the same distributions (norms at 0 = scale 1, projections at std 0.02)
    for model, prefix in ((encoder_decoder, "model.decoder.layers.0"), (decoder_only, "model.layers.0")):
        weights = dict(model.named_parameters())
        assert torch.count_nonzero(weights[f"{prefix}.pre_feedforward_layernorm.weight"]) == 0
        assert weights[f"{prefix}.mlp.up_proj.weight"].std().item() == pytest.approx(0.02, rel=0.15)
    # tied: the decoder's input embeddings are the output layer in both
    assert encoder_decoder.get_output_embeddings().weight is encoder_decoder.model.decoder.embed_tokens.weight
    assert decoder_only.get_output_embeddings().weight is decoder_only.model.embed_tokens.weight


def test_with_the_same_weights_and_no_cross_attention_the_decoder_computes_the_decoder_only_model():
    torch.manual_seed(0)
    encoder_decoder, decoder_only = build_pair()
    encoder_decoder.eval(), decoder_only.eval()
    target = encoder_decoder.model.decoder.state_dict()
    for name, weight in decoder_only.model.state_dict().items():
        parts = name.split(".")
        if parts[0] == "layers":
            parts[2] = {v: k for k, v in GEMMA2_NAME.items()}.get(parts[2], parts[2])
        target[".".join(parts)] = weight.clone()
    for i in range(len(encoder_decoder.model.decoder.layers)):
        target[f"layers.{i}.cross_attn.o_proj.weight"].zero_()
    encoder_decoder.model.decoder.load_state_dict(target)

    ids = torch.randint(3, 300, (2, 11))
    source = torch.randint(3, 300, (2, 7))
    with torch.no_grad():
        expected = decoder_only(input_ids=ids).logits
        got = encoder_decoder(input_ids=source, decoder_input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # the check can fail: with the cross-attention back, the source changes the logits
    with torch.no_grad():
        encoder_decoder.model.decoder.layers[0].cross_attn.o_proj.weight.normal_(0, 0.5)
        changed = encoder_decoder(input_ids=source, decoder_input_ids=ids).logits
    assert not torch.allclose(changed, expected, atol=1e-3)


def test_the_shipped_pair_is_matched():
    """sora.yaml and chatgpt.yaml: the same block, width, heads, ffn, context, tokenizer and data;
    the encoder-decoder L/2 + L/2 against the decoder-only L (T5's P-parameter pair), so their
    non-embedding parameters are equal."""
    import yaml

    sora = yaml.safe_load((SHIPPED / "sora.yaml").read_text())
    chatgpt = yaml.safe_load((SHIPPED / "chatgpt.yaml").read_text())
    assert (sora["model"]["arch"], chatgpt["model"]["arch"]) == ("t5gemma", "gemma2")
    for key in ("hidden", "heads", "ffn", "context", "attention_dropout"):
        assert sora["model"].get(key) == chatgpt["model"].get(key), key
    assert 2 * sora["model"]["layers"] == chatgpt["model"]["layers"]
    for section in ("tokenizer", "data", "prompt"):
        assert sora.get(section) == chatgpt.get(section), section
    # each arm's learning rate is its own pick from the same grid (docs/compare.md); the rest is shared
    assert {**sora["train"], "lr": None} == {**chatgpt["train"], "lr": None}
    encoder_decoder, decoder_only = build_pair(layers=1), build_pair(layers=2)[1]

    def non_embedding(model) -> int:
        embeddings = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
        return sum(p.numel() for p in model.parameters() if id(p) not in embeddings)

    # plus the cross-attention (4 projections, 2 norms) and the encoder's final norm
    assert non_embedding(encoder_decoder[0]) == non_embedding(decoder_only) + 4 * 32 * 32 + 3 * 32


def test_the_settings_table_reads_what_the_built_model_applies():
    """settings_diff reads positions, norm, activation and dropout from the built models, not from
    recipe keys: the Llama layout applies no hidden dropout although model.dropout says 0.1, BART
    applies it; the matched pair's block settings are equal, the earlier pair's are not."""
    from textgen_cli.comparison.settings_diff import block_settings, parameter_counts

    def built(family: str, arch: str, layers: int = 2):
        section = ModelSection(
            family=family, arch=arch, layers=layers, hidden=32, heads=4, ffn=64, context=48, dropout=0.1
        )
        return role_for(family).build(section, Vocab())

    llama, bart = block_settings(built("chatgpt", "llama")), block_settings(built("sora", "bart"))
    assert (llama["hidden dropout"], bart["hidden dropout"]) == ("0", "0.1")
    assert (llama["positions"], bart["positions"]) == ("rotary", "learned absolute")
    assert (llama["norm"], bart["norm"]) == ("pre-RMSNorm", "post-LayerNorm")
    assert (llama["activation"], bart["activation"]) == ("SwiGLU", "GELU")
    assert block_settings(built("chatgpt", "gpt2"))["positions"] == "learned absolute"
    assert block_settings(built("sora", "t5"))["positions"] == "relative buckets"
    encoder_decoder, decoder_only = built("sora", "t5gemma", 1), built("chatgpt", "gemma2", 2)
    assert block_settings(encoder_decoder) == block_settings(decoder_only)
    assert (
        block_settings(decoder_only)["activation"] == "GeGLU"
        and block_settings(decoder_only)["norm"] == "pre+post-RMSNorm"
    )
    total, non_embedding = parameter_counts(decoder_only)
    assert total - non_embedding == 300 * 32  # one tied table
    total, non_embedding = parameter_counts(encoder_decoder)
    assert total - non_embedding == 2 * 300 * 32  # the encoder's own table and the decoder's tied one
