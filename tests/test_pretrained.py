"""Starting from checkpoints textgen did not write (issue 14): six architectures with their own
tokenizers go through finetune, generate, evaluate and compare; tokenizer adaptation; a tokenizer's
own chat template; the role following the config; T5 sentinels; hub ids offline; `scratch`; LoRA.

The tiny checkpoints are made here with save_pretrained (tests/foreign_checkpoints.py) and trained
once per session for a few steps; every test inspects those runs or loads the checkpoints."""

from __future__ import annotations

import json
import math
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from foreign_checkpoints import ARCHITECTURES, CHAT_TEMPLATE, SPECIALS, save_checkpoint, save_gguf
from harness import OMIT, REPO, SHIPPED, cli_env, moby_lines, textgen, usage_error, write_recipe
from textgen_cli.core.errors import UserError

STEPS = 4
# the model's sizes and tokenizer come from the checkpoint it starts from (model.init_from)
FROM_A_CHECKPOINT = {"layers": OMIT, "hidden": OMIT, "heads": OMIT, "ffn": OMIT}


def finetune_sections(steps: int) -> dict:
    """A short finetuning on the verse pairs of the space, evaluated on 4 test examples."""
    return {
        "stages": ["finetune"],
        "data": {
            "finetune": {
                "task": "pairs",
                "train": "data/train.jsonl",
                "validation": "data/val.jsonl",
                "test": "data/test.jsonl",
            }
        },
        "prompt": {"system": "Modern English."},
        "train": {
            "seed": 7,
            "device": "cpu",
            "batch_size": 4,
            "lr": 3.0e-3,
            "warmup_steps": 1,
            "log_every": 2,
            "eval_every": 4,
            "eval_batches": 1,
        },
        "finetune": {"steps": steps},
        "eval": {"bootstrap": 20, "max_examples": 4},
        "generate": {"max_new_tokens": 4},
    }


@dataclass
class Space:
    root: Path
    checkpoints: dict[str, Path]

    def recipe(self, family: str) -> Path:
        return self.root / f"{family}.yaml"


@pytest.fixture(scope="session")
def space(tmp_path_factory) -> Space:
    """The tiny foreign checkpoints, a little verse data and one recipe per family."""
    root = tmp_path_factory.mktemp("pretrained")
    texts = [line.strip() for line in moby_lines(300) if line.strip()]
    checkpoints = {arch: save_checkpoint(root / "checkpoints", arch, texts) for arch in ARCHITECTURES}
    checkpoints["qwen2-chat"] = save_checkpoint(root / "checkpoints", "qwen2", texts, chat=True)
    rows = (SHIPPED / "data" / "bible-modern" / "train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    rows.sort(key=len)  # the shortest verses: most fit a 64-token context
    (root / "data").mkdir()
    for name, chosen in (("train", rows[:40]), ("val", rows[40:48]), ("test", rows[48:52])):
        (root / "data" / f"{name}.jsonl").write_text("".join(chosen), encoding="utf-8")
    for family in ("chatgpt", "sora"):
        write_recipe(
            root / f"{family}.yaml", family, model=FROM_A_CHECKPOINT, tokenizer=OMIT, **finetune_sections(STEPS)
        )
    return Space(root, checkpoints)


def family_of(name: str) -> str:
    return SPECIALS[name.removesuffix("-chat")][0]


_RUNS: dict[str, dict] = {}


def finetuned(space: Space, name: str, *overrides: str) -> dict:
    """`finetune` (in this process) from checkpoint `name`, then evaluation of its final/ on the
    test split; once per session per (name, overrides)."""
    from textgen_cli.evaluation.evaluate import run_evaluate
    from textgen_cli.recipe import load_recipe
    from textgen_cli.training.finetune import run_finetune

    key = "|".join((name, *overrides))
    if key not in _RUNS:
        run_name = name + "".join(f"-{abs(hash(o)) % 10_000}" for o in overrides)
        loaded = load_recipe(
            str(space.recipe(family_of(name))),
            [
                f"model.init_from={space.checkpoints[name]}",
                f"run.root={space.root / 'runs'}",
                f"run.name={run_name}",
                *overrides,
            ],
        )
        summary = run_finetune(loaded)
        report = run_evaluate(loaded, summary.final_dir, None, "test", [])
        _RUNS[key] = {"summary": summary, "eval": report, "loaded": loaded}
    return _RUNS[key]


# ------------------------------------------------------------------ end to end, every architecture


@pytest.mark.parametrize("name", [*ARCHITECTURES, "qwen2-chat"])
def test_a_foreign_checkpoint_finetunes_evaluates_and_reloads(space, name):
    import transformers

    from textgen_cli.models import role_for

    run = finetuned(space, name)
    summary, report = run["summary"], run["eval"]
    assert summary.steps == STEPS and summary.init_from == str(space.checkpoints[name])
    assert math.isfinite(summary.final_val_loss) and summary.final_val_loss < summary.initial_val_loss, summary
    assert report.n_examples == 4 and set(report.metrics) >= {"bleu", "chrf", "rougeL"}
    assert math.isfinite(report.likelihood["bits_per_byte"])
    final = Path(summary.final_dir)
    role = role_for(family_of(name))
    model = getattr(transformers, role.auto_class).from_pretrained(final)  # plain transformers reloads it
    tokenizer = transformers.AutoTokenizer.from_pretrained(final)
    assert model.config.model_type == name.removesuffix("-chat")
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer)
    assert tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id


@pytest.mark.parametrize("name", ["gpt2", "llama", "t5", "bart"])
def test_generate_from_a_finetuned_foreign_checkpoint(space, name):
    from textgen_cli.generation.generate import load_generator

    final = finetuned(space, name)["summary"].final_dir
    generator = load_generator(None, final, overrides=["generate.max_new_tokens=5"])
    assert generator.family == family_of(name)
    prompts = ["And God said, Let there be light.", "Jesus wept."]
    results = generator.batch(prompts)
    for prompt, result in zip(prompts, results):
        # an untrained T5 may emit only pad (its decoder start), which decoding strips as padding
        assert isinstance(result.output, str) and 0 <= result.new_tokens <= 5
        assert result.finish_reason in ("eos", "length")
        assert result.prompt_tokens == len(generator.prompt(prompt).ids) > len(generator.tokenizer(prompt)["input_ids"])


def readme_commands() -> list[str]:
    """The commands of the README's "Compare two pretrained models" section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Compare two pretrained models", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.startswith("textgen ")]


def test_the_readme_comparison_of_two_pretrained_models_runs_offline(space, tmp_path):
    """The README's three commands, with the hub ids replaced by tiny local GPT-2 and BART checkpoints
    (and overrides that make them tiny runs): finetune each, then compare the two runs."""
    import shlex

    commands = readme_commands()
    assert len(commands) == 3 and "openai-community/gpt2" in commands[0] and "facebook/bart-base" in commands[1]
    local = {
        "openai-community/gpt2": str(space.checkpoints["gpt2"]),
        "facebook/bart-base": str(space.checkpoints["bart"]),
    }
    tiny = [
        "finetune.steps=2",
        "data.max_examples=40",
        "train.batch_size=4",
        "train.eval_batches=1",
        "eval.max_examples=4",
        "eval.bootstrap=20",
        "generate.max_new_tokens=4",
    ]
    for command in commands:
        args = shlex.split(command)[1:]
        args = [next((arg.replace(hub, path) for hub, path in local.items() if hub in arg), arg) for arg in args]
        if args[0] == "finetune":
            args += tiny
        result = textgen(args, cwd=tmp_path)
        assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
    assert "gpt2" in result.stdout and "bart-base" in result.stdout and "BLEU" in result.stdout


# ------------------------------------------------------------------ tokenizer adaptation


def test_only_missing_needed_tokens_are_added_with_mean_rows(space):
    import torch
    from safetensors.torch import load_file

    from textgen_cli.models import load_pretrained

    original = load_file(str(space.checkpoints["llama"] / "model.safetensors"))
    start = load_pretrained(space.checkpoints["llama"], "chatgpt")
    assert start.added_tokens == ["<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    old_in, old_out = original["model.embed_tokens.weight"], original["lm_head.weight"]  # untied
    rows = old_in.shape[0]
    new_in, new_out = start.model.get_input_embeddings().weight, start.model.get_output_embeddings().weight
    assert new_in.shape[0] == rows + 5 == len(start.tokenizer)
    assert torch.equal(new_in[:rows], old_in) and torch.equal(new_out[:rows], old_out)
    for row in range(rows, rows + 5):
        assert torch.allclose(new_in[row], old_in.mean(dim=0)) and torch.allclose(new_out[row], old_out.mean(dim=0))
    assert start.tokenizer.pad_token == "<pad>" and start.tokenizer.bos_token == "<s>"  # its own bos kept

    t5 = load_pretrained(space.checkpoints["t5"], "sora")
    assert "<pad>" not in t5.added_tokens and t5.tokenizer.pad_token_id == 0  # its own pad kept
    # a tokenizer with its own chat template and a pad token needs nothing
    assert load_pretrained(space.checkpoints["qwen2-chat"], "chatgpt").added_tokens == []


def qwen2_beside(tmp_path: Path, rows: int, specials: dict[str, str], chat: bool = False) -> tuple[Path, object]:
    """A tiny `qwen2` model with `rows` embedding rows saved beside a plain tokenizer of 320 tokens
    (`chat`: with a chat template of its own)."""
    from foreign_checkpoints import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer([line.strip() for line in moby_lines(300) if line.strip()], specials)
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    model = tiny_model("qwen2", tokenizer)
    model.resize_token_embeddings(rows, mean_resizing=False)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    return tmp_path, model


def test_a_tokenizer_that_loads_bigger_than_the_model_gets_mean_rows(tmp_path):
    """transformers loads a plain tokenizer saved beside a `qwen2` model as Qwen2Tokenizer, which adds
    an `<|endoftext|>` pad: one token more than the model has rows."""
    import torch
    from transformers import AutoTokenizer

    from textgen_cli.models import load_pretrained

    folder, saved = qwen2_beside(tmp_path, 320, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    assert len(AutoTokenizer.from_pretrained(folder)) == 321  # the case itself: 321 tokens for 320 rows
    start = load_pretrained(folder, "chatgpt")
    assert start.tokens_beyond_rows == ["<|endoftext|>"] and start.tokenizer.pad_token == "<|endoftext|>"
    assert start.added_tokens == ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]  # pad: its own now
    weight = start.model.get_input_embeddings().weight
    old = saved.get_input_embeddings().weight
    assert weight.shape[0] == len(start.tokenizer) == 325
    assert torch.equal(weight[:320], old)
    assert torch.allclose(weight[start.tokenizer.convert_tokens_to_ids("<|endoftext|>")], old.mean(dim=0))
    assert start.adaptation("finetune")[0] == (
        f"finetune: the tokenizer of {folder} loads with 1 token(s) the model has no embedding row for: "
        "<|endoftext|> (rows added: the mean of the others)"
    )


def test_more_rows_than_tokens_are_kept_untouched(tmp_path):
    """A padded vocabulary (Qwen2.5: more embedding rows than tokens) loads as it is."""
    import torch

    from textgen_cli.models import load_pretrained

    folder, saved = qwen2_beside(tmp_path, 384, {"eos_token": "<|endoftext|>", "pad_token": "<pad>"}, chat=True)
    start = load_pretrained(folder, "chatgpt")
    assert start.tokens_beyond_rows == start.added_tokens == [] and len(start.tokenizer) == 320
    weight = start.model.get_input_embeddings().weight
    assert weight.shape[0] == 384 and torch.equal(weight, saved.get_input_embeddings().weight)


def test_a_tokenizer_of_another_model_is_still_an_error(tmp_path):
    """More base-vocabulary tokens than rows is not a tokenizer that grew as it loaded."""
    from textgen_cli.models import load_pretrained

    folder, _ = qwen2_beside(tmp_path, 300, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    with pytest.raises(UserError, match="the model has 300 token embeddings but its tokenizer has 321 tokens"):
        load_pretrained(folder, "chatgpt")


def test_the_role_follows_the_config_and_a_mismatch_is_an_error(space):
    from textgen_cli.models import load_pretrained

    with pytest.raises(UserError, match="is a `sora` model, but the recipe's model.family is `chatgpt`"):
        load_pretrained(space.checkpoints["t5"], "chatgpt")
    with pytest.raises(UserError, match="is a `chatgpt` model, but the recipe's model.family is `sora`"):
        load_pretrained(space.checkpoints["gpt_neox"], "sora")


def test_context_comes_from_the_config_field_else_model_context(space):
    from textgen_cli.models import context_of, load_pretrained

    assert context_of(load_pretrained(space.checkpoints["gpt2"], "chatgpt").model.config) == 128  # n_positions
    assert (
        context_of(load_pretrained(space.checkpoints["llama"], "chatgpt").model.config) == 128
    )  # max_position_embeddings
    t5 = load_pretrained(space.checkpoints["t5"], "sora", context=48).model
    assert context_of(t5.config) == 48  # T5 has no such field: model.context


def test_own_chat_template_is_used_byte_for_byte(space):
    from textgen_cli.data.readers import Dialogue
    from textgen_cli.generation.generate import load_generator
    from textgen_cli.generation.prompts import build_prompt
    from textgen_cli.models import DECODER_ONLY
    from textgen_cli.objectives import IGNORE_INDEX, TruncationCount

    run = finetuned(space, "qwen2-chat")
    generator = load_generator(None, run["summary"].final_dir)
    tokenizer = generator.tokenizer
    assert tokenizer.chat_template == CHAT_TEMPLATE  # kept through finetuning
    source, target = "And God said, Let there be light.", "God said, Let there be light."
    messages = [{"role": "system", "content": "Modern English."}, {"role": "user", "content": source}]
    expected = list(
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
    )
    assert generator.prompt(source).ids == expected
    assert build_prompt(tokenizer, source, "chatgpt", "chat", 512, system="Modern English.").ids == expected
    assert (
        tokenizer.decode(expected)
        == "<|im_start|>system\nModern English.<|im_end|>\n<|im_start|>user\n"
        + source
        + "<|im_end|>\n<|im_start|>assistant\n"
    )
    # finetuning: the prompt, then the reply; the labels are the reply and its end-of-turn markup
    [(ids, labels)] = DECODER_ONLY.finetune_examples(
        [Dialogue("0", [{"role": "user", "content": source}, {"role": "assistant", "content": target}])],
        tokenizer,
        run["loaded"],
        512,
        TruncationCount(),
    ).sequences
    full = list(
        tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": target}], tokenize=True, return_dict=True
        )["input_ids"]
    )
    assert ids == full and ids[: len(expected)] == expected
    assert all(label == IGNORE_INDEX for label in labels[: len(expected)])
    assert tokenizer.decode(labels[len(expected) :]) == target + "<|im_end|>\n"


def test_a_too_long_message_is_cut_to_fit_the_own_template(space):
    from transformers import AutoTokenizer

    from textgen_cli.generation.prompts import build_prompt

    tokenizer = AutoTokenizer.from_pretrained(space.checkpoints["qwen2-chat"])
    prompt = build_prompt(tokenizer, "word " * 200, "chatgpt", "chat", 40)
    assert prompt.truncated and len(prompt.ids) <= 40
    assert tokenizer.decode(prompt.ids).endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_t5_pretraining_uses_its_sentinels(space):
    import numpy as np

    from textgen_cli.models import load_pretrained
    from textgen_cli.models.infilling import SentinelInfilling, sentinel_ids

    start = load_pretrained(space.checkpoints["t5"], "sora", needs_mask=True)
    assert "<mask>" not in start.added_tokens  # T5 infills with its sentinels, not <mask>
    sentinels = sentinel_ids(start.tokenizer)
    assert len(sentinels) == 10
    blocks = np.arange(100, 140, dtype=np.int64).reshape(1, 40)
    data = SentinelInfilling(
        blocks, 0.3, 3.0, 7, bos_id=-5, eos_id=1, pad_id=0, mask_id=-1, start_id=0, sentinels=tuple(sentinels)
    )
    source, target = data.example(0, 0)
    assert source[-1] == target[-1] == 1 and target[0] == sentinels[0]
    # putting each span back after its sentinel rebuilds the block
    spans, current = {}, None
    for token in target[:-1]:
        if token in sentinels:
            current = token
            spans[current] = []
        else:
            spans[current].append(token)
    rebuilt = [t for token in source[:-1] for t in (spans[token] if token in sentinels else [token])]
    assert rebuilt == blocks[0].tolist()
    assert 0.2 < sum(map(len, spans.values())) / 40 < 0.4
    batch = data.collate([0], 0)
    assert batch["decoder_input_ids"][0, 0] == 0  # T5's decoder starts from pad


def test_continued_pretraining_of_a_t5_checkpoint(space, tmp_path):
    (tmp_path / "train.txt").write_text("".join(moby_lines(60)), encoding="utf-8")
    (tmp_path / "val.txt").write_text("".join(moby_lines(20, "validation")), encoding="utf-8")
    recipe = tmp_path / "t5.yaml"
    recipe.write_text(
        "stages: [pretrain]\nmodel: {family: sora, context: 32}\ndata: {pretrain: {train: train.txt, validation: val.txt}}\n"
        "train: {batch_size: 4, eval_every: 3, log_every: 3}\npretrain: {steps: 3}\n",
        encoding="utf-8",
    )
    from textgen_cli.recipe import load_recipe
    from textgen_cli.training.pretrain import run_pretrain

    summary = run_pretrain(
        load_recipe(str(recipe), [f"model.init_from={space.checkpoints['t5']}", f"run.root={tmp_path / 'runs'}"])
    )
    assert summary.notes["block_size"] == 30 and math.isfinite(summary.final_val_loss)
    assert summary.init_from == str(space.checkpoints["t5"])


# ------------------------------------------------------------------ GGUF files


@pytest.fixture(scope="session")
def gguf_start(space) -> tuple[Path, object, object]:
    """A tiny Llama written as a GGUF file (matrices in Q8_0), alone in its folder; with the model
    transformers builds from the weights that file holds, and the tokenizer it was written with."""
    folder = space.root / "gguf"
    folder.mkdir()
    texts = [line.strip() for line in moby_lines(300) if line.strip()]
    model, tokenizer = save_gguf(folder / "tiny-llama.Q8_0.gguf", texts)
    return folder / "tiny-llama.Q8_0.gguf", model, tokenizer


def test_a_gguf_file_loads_dequantized_with_its_tokenizer_and_chat_template(gguf_start):
    import torch

    from textgen_cli.models import load_pretrained

    file, expected, tokenizer = gguf_start
    for ref in (file, file.parent):  # the file, or the folder that holds it
        start = load_pretrained(ref, "chatgpt")
        assert start.model.config.model_type == "llama" and not hasattr(start.model.config, "quantization_config")
        assert start.tokenizer.chat_template == CHAT_TEMPLATE and start.tokenizer.eos_token == "<|im_end|>"
        assert start.added_tokens == ["<pad>"]  # its pad was its eos
        text = "Call me Ishmael. Some years ago"
        ids = start.tokenizer(text)["input_ids"]
        assert ids == tokenizer(text)["input_ids"]
        with torch.no_grad():
            got = start.model(torch.tensor([ids])).logits[..., : len(tokenizer)]
            want = expected(torch.tensor([ids])).logits
        assert torch.equal(got, want)  # the Q8_0 blocks dequantized exactly as the gguf package does


def test_finetune_from_a_gguf_file_saves_a_plain_safetensors_checkpoint(space, gguf_start):
    import transformers
    from safetensors import safe_open

    from textgen_cli.recipe import load_recipe
    from textgen_cli.training.finetune import run_finetune

    file = gguf_start[0]
    loaded = load_recipe(
        str(space.recipe("chatgpt")), [f"model.init_from={file}", f"run.root={space.root / 'runs'}", "run.name=gguf"]
    )
    summary = run_finetune(loaded)
    assert summary.init_from == str(file) and summary.final_val_loss < summary.initial_val_loss
    final = Path(summary.final_dir)
    assert sorted(p.name for p in final.glob("*.safetensors")) == ["model.safetensors"]
    with safe_open(str(final / "model.safetensors"), "pt") as weights:
        assert "model.embed_tokens.weight" in weights.keys()
    assert "quantization_config" not in json.loads((final / "config.json").read_text(encoding="utf-8"))
    model = transformers.AutoModelForCausalLM.from_pretrained(final)  # plain transformers, no gguf
    tokenizer = transformers.AutoTokenizer.from_pretrained(final)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert tokenizer.chat_template == CHAT_TEMPLATE and tokenizer.pad_token == "<pad>"


def test_a_gguf_quantization_type_transformers_cannot_read_exits_2(space, gguf_start, tmp_path):
    texts = [line.strip() for line in moby_lines(300) if line.strip()]
    bad = tmp_path / "bad.gguf"
    save_gguf(bad, texts, raw_types={"blk.0.ffn_down.weight": "Q8_1"})  # Q8_1: the gguf package has no dequantizer
    result = textgen(
        ["finetune", "--recipe", str(space.recipe("chatgpt")), f"model.init_from={bad}", "run.name=bad-gguf"],
        cwd=space.root,
    )
    usage_error(result, f"checkpoint '{bad}'", "quantization type Q8_1 (blk.0.ffn_down.weight)", "cannot be read")
    assert not (space.root / "runs" / "bad-gguf").exists()


def test_a_folder_with_two_gguf_files_is_an_error(tmp_path):
    from textgen_cli.models import load_pretrained

    for name in ("a.Q4_0.gguf", "a.Q8_0.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    with pytest.raises(UserError, match=r"2 GGUF files \(a.Q4_0.gguf, a.Q8_0.gguf\); expected one"):
        load_pretrained(tmp_path, "chatgpt")


# ------------------------------------------------------------------ layouts from scratch


@pytest.mark.parametrize(
    "arch,family,model_type",
    [
        ("t5", "sora", "t5"),
        ("llama", "chatgpt", "llama"),
        ("qwen2", "chatgpt", "qwen2"),
        ("auto", "sora", "bart"),
        ("auto", "chatgpt", "gpt2"),
    ],
)
def test_model_arch_builds_the_layout_with_the_recipe_sizes(tokenizer, arch, family, model_type):
    from textgen_cli.core.schema import ModelSection
    from textgen_cli.models import context_of, role_for

    section = ModelSection(family=family, arch=arch, layers=2, hidden=32, heads=2, ffn=64, context=48)
    model = role_for(family).build(section, tokenizer)
    assert model.config.model_type == model_type
    assert model.config.num_hidden_layers == 2 and model.get_input_embeddings().weight.shape == (len(tokenizer), 32)
    assert context_of(model.config) == 48


def test_default_layouts_are_todays_builders(tokenizer):
    """`model.arch: auto` builds exactly what the bart / gpt2 builders build (same seed, same weights)."""
    import torch

    from textgen_cli.core.schema import ModelSection
    from textgen_cli.models import role_for
    from textgen_cli.models.bart import build_bart
    from textgen_cli.models.gpt2 import build_gpt2

    for family, builder in (("sora", build_bart), ("chatgpt", build_gpt2)):
        section = ModelSection(family=family, layers=1, hidden=32, heads=2, ffn=64, context=32)
        torch.manual_seed(3)
        ours = role_for(family).build(section, tokenizer).state_dict()
        torch.manual_seed(3)
        theirs = builder(section, tokenizer).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_an_arch_of_the_other_family_exits_2(space):
    result = textgen(
        ["finetune", "--recipe", str(space.recipe("chatgpt")), "model.init_from=scratch", "model.arch=t5"],
        cwd=space.root,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "key 'model.arch': `t5` builds a `sora` model, but model.family is `chatgpt`" in result.stderr


def test_a_finetune_only_recipe_from_scratch_runs_end_to_end(space):
    """`stages: [finetune]` with `model.init_from: scratch`: random weights, a tokenizer trained on
    the finetune training split (no pretraining text), then the evaluation."""
    recipe = space.root / "scratch.yaml"
    write_recipe(
        recipe, "chatgpt", model={"init_from": "scratch"}, **finetune_sections(3)
    )  # the tiny model and tokenizer
    result = textgen(["finetune", "--recipe", str(recipe), "--json"], cwd=space.root)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["from_scratch"] is True and summary["init_from"] == "scratch"
    assert "eval" in summary and summary["eval"]["n_examples"] == 4
    assert "training byte-level BPE (vocab 400) on 80 finetuning texts" in result.stderr


# ------------------------------------------------------------------ hub ids


def test_a_hub_id_not_in_the_cache_offline_exits_2_with_the_fetch_command(space, tmp_path):
    env = cli_env(HF_HOME=str(tmp_path / "empty-hf-home"))
    args = ["finetune", "--recipe", str(space.recipe("chatgpt")), "model.init_from=openai-community/gpt2"]
    result = textgen(args, cwd=space.root, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(
        "error: model 'openai-community/gpt2' is not a local directory and not in the Hugging Face cache"
    )
    assert "HF_HUB_OFFLINE=1" in line and "`hf download openai-community/gpt2`" in line
    assert not (space.root / "runs" / "chatgpt").exists()


def test_the_cli_leaves_hf_hub_offline_to_the_user():
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    import sys

    code = "import os, textgen_cli.cli.app; print(os.environ.get('HF_HUB_OFFLINE'))"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "None", result.stderr


def test_recipe_keeps_hub_ids_and_scratch_and_resolves_folders(tmp_path):
    from textgen_cli.recipe import load_recipe

    (tmp_path / "models" / "mine").mkdir(parents=True)
    recipe = tmp_path / "r.yaml"
    for value, expected in (
        ("openai-community/gpt2", "openai-community/gpt2"),
        ("scratch", "scratch"),
        ("models/mine", str((tmp_path / "models" / "mine").resolve())),
    ):
        recipe.write_text(f"model: {{family: chatgpt, init_from: {value}}}\nstages: []\n", encoding="utf-8")
        assert load_recipe(str(recipe)).recipe.model.init_from == expected


# ------------------------------------------------------------------ LoRA, checkpointing, fp16


def test_lora_trains_only_the_adapters_and_merges_into_a_plain_model(space, tmp_path):
    import torch
    import transformers

    from textgen_cli.core.schema import LoraSection
    from textgen_cli.models import load_pretrained
    from textgen_cli.models.lora import attach_lora, merged_for_saving

    model = load_pretrained(space.checkpoints["llama"], "chatgpt").model
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model, notes = attach_lora(model, LoraSection(rank=4))
    assert 0 < notes["trainable_share"] < 0.2
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 300, (2, 12))
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {
        name
        for name, p in model.named_parameters()
        if name.replace(".base_layer", "") in before and not torch.equal(p, before[name.replace(".base_layer", "")])
    }
    adapters = {name for name, p in model.named_parameters() if "lora_" in name}
    assert changed == set() and adapters and all(p.requires_grad for n, p in model.named_parameters() if n in adapters)
    assert any(not torch.all(p == 0) for n, p in model.named_parameters() if "lora_B" in n)  # B starts at 0: it moved
    model.eval()  # no adapter dropout
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    merged = merged_for_saving(model, tmp_path)
    merged.save_pretrained(tmp_path / "merged")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in name for name, _ in reloaded.named_parameters())
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, expected, atol=1e-5)


def test_lora_trains_the_rows_of_added_tokens(space, tmp_path):
    """The llama checkpoint's tokenizer has no chat template: textgen adds its role tokens, whose
    rows start as the mean. Under LoRA those rows (not the pad's) must train, and no other row."""
    import torch

    from textgen_cli.core.schema import LoraSection
    from textgen_cli.models import load_pretrained
    from textgen_cli.models.lora import attach_lora, merged_for_saving
    from textgen_cli.training.finetune import trainable_new_tokens

    pretrained = load_pretrained(space.checkpoints["llama"], "chatgpt")
    tokenizer = pretrained.tokenizer
    new = trainable_new_tokens(tokenizer, {"added_tokens": pretrained.added_tokens})
    assert new and tokenizer.pad_token_id not in new
    before = pretrained.model.get_input_embeddings().weight.detach().clone()
    model, notes = attach_lora(pretrained.model, LoraSection(rank=4), new_tokens=new)
    assert notes["trainable_tokens"] == len(new)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.tensor([[*new, 5, 6, 7, *new]])
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = merged_for_saving(model, tmp_path).get_input_embeddings().weight
    moved = (after != before).any(dim=1).nonzero().flatten().tolist()
    assert moved == sorted(new)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_label_positions_loss_is_transformers_own_loss(space, lora):
    """textgen's loss (the output layer applied at label positions only) against the loss and the
    gradients transformers computes itself from the full logits: same to float tolerance, for an
    assistant-only-labelled, padded batch."""
    import torch

    from textgen_cli.core.schema import LoraSection
    from textgen_cli.models import load_pretrained
    from textgen_cli.models.lora import attach_lora
    from textgen_cli.objectives import IGNORE_INDEX, token_loss_sum

    torch.manual_seed(0)
    model = load_pretrained(space.checkpoints["llama"], "chatgpt").model
    if lora:
        model, _ = attach_lora(model, LoraSection(rank=4))
        for name, param in model.named_parameters():  # B starts at 0; nonzero, the adapters take part
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.02)
    model.train()
    ids = torch.randint(0, 300, (3, 10))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # a padded row
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    labels[:, :4] = IGNORE_INDEX  # the prompt: no loss
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    trained = [p for p in model.parameters() if p.requires_grad]

    ours, n_tokens = token_loss_sum(model, batch, causal=True)
    ours_grads = torch.autograd.grad(ours, trained)
    theirs = model(**batch).loss * n_tokens  # transformers' mean over the shifted labels, as a sum
    their_grads = torch.autograd.grad(theirs, trained)
    assert n_tokens == int((labels[:, 1:] != IGNORE_INDEX).sum())
    assert torch.allclose(ours, theirs, rtol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(ours_grads, their_grads))


def test_lora_finetune_and_adv_train_save_merged_models(space):
    import transformers

    run = finetuned(
        space, "gpt2", "model.lora.rank=4", "model.lora.keep_adapter=true", "train.gradient_checkpointing=true"
    )
    summary = run["summary"]
    lora = summary.notes["lora"]
    assert lora["target_modules"] == ["c_attn", "c_proj", "c_fc"] and 0 < lora["trainable_share"] < 0.5
    final = Path(summary.final_dir)
    assert (final / "adapter" / "adapter_config.json").is_file()
    model = transformers.AutoModelForCausalLM.from_pretrained(final)
    assert not any("lora" in name for name in model.state_dict())
    assert summary.final_val_loss < summary.initial_val_loss

    from textgen_cli.recipe import load_recipe
    from textgen_cli.training.adv_train import run_adv_train

    loaded = load_recipe(
        str(space.recipe("chatgpt")),
        [
            f"model.init_from={final}",
            f"run.root={space.root / 'runs'}",
            "run.name=lora-adv",
            "model.lora.rank=2",
            "adv_train.steps=2",
            "adv_train.method=fgm",
        ],
    )
    adv = run_adv_train(loaded)
    assert adv.notes["lora"]["rank"] == 2 and math.isfinite(adv.final_val_loss)
    assert not any(
        "lora" in name for name in transformers.AutoModelForCausalLM.from_pretrained(adv.final_dir).state_dict()
    )


def test_gradient_checkpointing_gives_the_same_run(space):
    plain = finetuned(space, "bart")["summary"]
    checkpointed = finetuned(space, "bart", "train.gradient_checkpointing=true")["summary"]
    assert checkpointed.final_val_loss == pytest.approx(plain.final_val_loss, rel=1e-5)


def test_fp16_on_cpu_is_a_clear_error():
    from textgen_cli.core.schema import TrainSection
    from textgen_cli.training.distribution import make_accelerator

    with pytest.raises(UserError, match="train.precision=fp16 needs a CUDA device"):
        make_accelerator(TrainSection(device="cpu", precision="fp16"))


def test_no_family_tests_outside_the_models_package():
    """Everything that differs between the roles is asked of the role object (models/roles.py)."""
    import re

    pattern = re.compile(
        r"""family\s*[!=]=|[!=]=\s*["'](sora|chatgpt)["']|["'](sora|chatgpt)["']\s*[!=]=|is_encoder_decoder"""
    )
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in sorted((REPO / "textgen_cli").rglob("*.py"))
        if "models" not in path.relative_to(REPO / "textgen_cli").parts
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []
