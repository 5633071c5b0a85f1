"""The prefix LM (`prefix-lm`): chatgpt's model with its prompt read both ways, checked against
references written out by hand.

- its attention mask, cell by cell, for right padding (training) and left padding (decoding);
- its finetuning examples: one per reply, ids equal to `apply_chat_template`, labels on that reply;
- its loss: equal to a plain forward with the hand-written mask, and different from the causal one;
- what reads what: a prefix position sees later prefix tokens, no position sees a later reply token;
- its checkpoints: saved as a prefix LM, started from any causal LM, and no other family's layout.
(Cached decoding equal to a full forward pass at every step is in test_generate.py.)
"""

from __future__ import annotations

import pytest
import torch

from textgen_cli.core.errors import UserError
from textgen_cli.core.schema import ModelSection
from textgen_cli.data.readers import Dialogue
from textgen_cli.models import role_for
from textgen_cli.objectives import IGNORE_INDEX, PrefixBlocks, TruncationCount, prefix_lm_mask, token_loss_sum
from textgen_cli.recipe import load_recipe

NEG = torch.finfo(torch.float32).min


def hand_mask(real: list[int], prefix: int) -> torch.Tensor:
    """(1, width, width): 0 where query q may read key k, written out cell by cell. `real` marks
    the real tokens; `prefix` counts the real tokens that are read both ways."""
    width = len(real)
    order = [sum(real[: k + 1]) - 1 for k in range(width)]  # index among the real tokens
    mask = torch.full((1, width, width), NEG)
    for q in range(width):
        for k in range(width):
            if real[k] and (k <= q or order[k] < prefix):
                mask[0, q, k] = 0.0
    return mask


def test_mask_matches_the_hand_written_one_for_right_and_left_padding():
    rows = [[1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]]
    prefixes = [3, 2, 0]
    mask = prefix_lm_mask(torch.tensor(rows), torch.tensor(prefixes), torch.float32)
    assert mask.shape == (3, 1, 7, 7)
    for i, (real, prefix) in enumerate(zip(rows, prefixes)):
        assert torch.equal(mask[i], hand_mask(real, prefix)), i
    # no prefix is the causal mask
    assert torch.equal((mask[2, 0] == 0), torch.ones(7, 7, dtype=torch.bool).tril())


def _recipe(tmp_path, family: str = "prefix-lm", system: str = ""):
    path = tmp_path / "r.yaml"
    path.write_text(f"model: {{family: {family}}}\nstages: []\nprompt: {{system: '{system}'}}\n", encoding="utf-8")
    return load_recipe(str(path))


DIALOGUE = Dialogue(
    "d",
    [
        {"role": "user", "content": "Where is the whale?"},
        {"role": "assistant", "content": "At sea."},
        {"role": "user", "content": "Which sea?"},
        {"role": "assistant", "content": "The Pacific."},
    ],
)


def test_one_example_per_reply_with_the_chat_template_and_labels_on_that_reply(tokenizer, tmp_path):
    loaded = _recipe(tmp_path, system="Be brief.")
    examples = role_for("prefix-lm").finetune_examples([DIALOGUE], tokenizer, loaded, 512, TruncationCount())
    assert examples.prefix_lm and len(examples) == 2
    system = [{"role": "system", "content": "Be brief."}]
    for (ids, labels), reply_at in zip(examples.sequences, (1, 3)):
        history = system + DIALOGUE.messages[:reply_at]
        prompt = list(tokenizer.apply_chat_template(history, add_generation_prompt=True)["input_ids"])
        reply = tokenizer(DIALOGUE.messages[reply_at]["content"], add_special_tokens=False)["input_ids"]
        assert ids == [*prompt, *reply, tokenizer.eos_token_id]
        assert labels == [IGNORE_INDEX] * len(prompt) + [*reply, tokenizer.eos_token_id]
    batch = examples.collate([0, 1], epoch=0)
    # the prefix: everything before the reply's start token (the assistant tag)
    for row, (ids, labels) in enumerate(examples.sequences):
        first_label = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        assert int(batch["prefix_lengths"][row]) == first_label - 1
        assert ids[first_label - 1] == tokenizer.convert_tokens_to_ids("<|assistant|>")


def _model(family: str, tokenizer, layers: int = 2):
    torch.manual_seed(0)
    section = ModelSection(family=family, arch="gemma2", layers=layers, hidden=32, heads=2, ffn=64, context=96)
    return role_for(family).build(section, tokenizer).eval()


def test_the_loss_is_the_plain_forward_with_the_hand_written_mask(tokenizer, tmp_path):
    loaded = _recipe(tmp_path)
    examples = role_for("prefix-lm").finetune_examples([DIALOGUE], tokenizer, loaded, 512, TruncationCount())
    batch = examples.collate([0, 1], epoch=0)
    model = _model("prefix-lm", tokenizer)
    with torch.no_grad():
        loss, n_tokens = token_loss_sum(model, batch, causal=True)
        expected, count = 0.0, 0
        for row, (ids, labels) in enumerate(examples.sequences):
            real = [1] * len(ids)
            mask = hand_mask(real, int(batch["prefix_lengths"][row]))[None]
            logits = model(input_ids=torch.tensor([ids]), attention_mask=mask).logits[0, :-1]
            targets = torch.tensor(labels[1:])
            expected += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
            count += int((targets != IGNORE_INDEX).sum())
        causal = {key: value for key, value in batch.items() if key != "prefix_lengths"}
        causal_loss, _ = token_loss_sum(model, causal, causal=True)
    assert n_tokens == count
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert abs(float(causal_loss) - float(loss)) > 1e-3  # the mask matters


def test_prefix_positions_read_later_prefix_tokens_and_nothing_reads_a_later_reply_token(tokenizer):
    model = _model("prefix-lm", tokenizer)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    prefix = torch.tensor([4])
    real = torch.ones_like(ids)

    def logits(x):
        with torch.no_grad():
            return model(input_ids=x, attention_mask=prefix_lm_mask(real, prefix, torch.float32)).logits[0]

    base = logits(ids)
    later_prefix = ids.clone()
    later_prefix[0, 3] = 40  # the last prefix token
    assert not torch.allclose(logits(later_prefix)[0], base[0])  # the first position reads it
    later_reply = ids.clone()
    later_reply[0, 6] = 40
    assert torch.allclose(logits(later_reply)[:6], base[:6])  # no earlier position reads it


def test_prefix_blocks_cut_inside_the_block_and_predict_only_after_the_cut():
    blocks = torch.arange(60).reshape(4, 15).numpy()
    sets = PrefixBlocks(blocks, seed=3)
    batch = sets.collate([0, 1, 2, 3], epoch=1)
    for row in range(4):
        cut = int(batch["prefix_lengths"][row])
        assert 1 <= cut < 14
        assert (batch["labels"][row, : cut + 1] == IGNORE_INDEX).all()
        assert torch.equal(batch["labels"][row, cut + 1 :], batch["input_ids"][row, cut + 1 :])
    again = PrefixBlocks(blocks, seed=3).collate([0, 1, 2, 3], epoch=1)
    assert torch.equal(batch["prefix_lengths"], again["prefix_lengths"])
    other = [PrefixBlocks(blocks, seed=3).split(i, epoch=2) for i in range(4)]
    assert other != batch["prefix_lengths"].tolist() or len(set(other)) == 1


def test_a_saved_prefix_lm_reloads_as_one_and_a_causal_lm_starts_one(tokenizer, tmp_path):
    from textgen_cli.models import family_of_checkpoint, load_checkpoint, load_pretrained, role_of_model

    prefix_dir, causal_dir = tmp_path / "prefix", tmp_path / "causal"
    for family, folder in (("prefix-lm", prefix_dir), ("chatgpt", causal_dir)):
        _model(family, tokenizer, layers=1).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    assert family_of_checkpoint(prefix_dir) == "prefix-lm"
    assert family_of_checkpoint(causal_dir) == "chatgpt"
    assert role_of_model(load_checkpoint(prefix_dir, "prefix-lm", len(tokenizer))).name == "prefix-lm"
    with pytest.raises(UserError, match="is a `prefix-lm` model"):
        load_checkpoint(prefix_dir, "chatgpt", len(tokenizer))
    started = load_pretrained(str(causal_dir), "prefix-lm").model
    assert role_of_model(started).name == "prefix-lm"  # and saved as one
    back = load_pretrained(str(prefix_dir), "chatgpt").model
    assert role_of_model(back).name == "chatgpt"
    with pytest.raises(UserError, match="is a `sora` model"):
        sora = role_for("sora").build(ModelSection(family="sora", layers=1, hidden=32, heads=2, ffn=64), tokenizer)
        sora.save_pretrained(tmp_path / "sora")
        tokenizer.save_pretrained(tmp_path / "sora")
        load_pretrained(str(tmp_path / "sora"), "prefix-lm")


def test_a_prefix_lm_is_built_from_decoder_only_layouts_only(tokenizer):
    with pytest.raises(UserError, match="model.arch.*t5gemma.*builds a `sora` model.*gpt2, llama, qwen2, gemma2"):
        role_for("prefix-lm").build(ModelSection(family="prefix-lm", arch="t5gemma", layers=1), tokenizer)
    for arch in ("gpt2", "llama", "qwen2"):
        section = ModelSection(family="prefix-lm", arch=arch, layers=1, hidden=32, heads=2, ffn=64, context=64)
        assert role_for("prefix-lm").build(section, tokenizer).config.textgen_family == "prefix-lm"
