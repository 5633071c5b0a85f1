"""A family and a layout are one entry each (docs/models.md, "Adding a family or a layout").

A module of its own, written here into a temporary folder, registers a toy role in `models.ROLES`
and a toy layout in `models.ARCHS`; nothing else in textgen changes. Recipes then validate with
them, and finetune, evaluate and generate run on them end to end.
"""

from __future__ import annotations

import importlib
import json
import sys

import pytest

from harness import recipe, save_recipe

TOY_MODULE = '''
"""A toy family and a toy layout: the only code a new family and layout need."""

import dataclasses

from textgen_cli.models.archs import ARCHS, Arch
from textgen_cli.models.gpt2 import build_gpt2
from textgen_cli.models.roles import ROLES
from textgen_cli.models.decoder_only import DecoderOnly


def build_toy_gpt(section, tokenizer):
    """GPT-2 blocks whose feed-forward is 3x the width, whatever model.ffn says."""
    return build_gpt2(dataclasses.replace(section, ffn=3 * section.hidden), tokenizer)


class ToyLM(DecoderOnly):
    """A decoder-only family under its own name, with its own default layout."""

    name = "toy-lm"
    default_arch = "toy-gpt"


ARCHS["toy-gpt"] = Arch("toy-gpt", "toy-lm", build_toy_gpt, ("c_attn", "c_proj", "c_fc"))
ROLES["toy-lm"] = ToyLM()
'''


@pytest.fixture
def toy_family(tmp_path, monkeypatch):
    """Import the toy module; its two entries are removed again after the test."""
    from textgen_cli.models.archs import ARCHS
    from textgen_cli.models.roles import ROLES

    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "toy_family.py").write_text(TOY_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setitem(ARCHS, "toy-gpt", None)  # placeholders: undone (deleted) after the test
    monkeypatch.setitem(ROLES, "toy-lm", None)
    monkeypatch.delitem(sys.modules, "toy_family", raising=False)
    return importlib.import_module("toy_family")


def toy_recipe(tmp_path) -> str:
    rows = [
        json.dumps({"source": f"say {w} twice", "target": f"{w} {w}"}) + "\n"
        for w in "red blue green black white gold iron salt wind fire rain snow stone tree bird fish".split()
    ]
    (tmp_path / "train.jsonl").write_text("".join(rows * 4), encoding="utf-8")
    (tmp_path / "validation.jsonl").write_text("".join(rows[:8]), encoding="utf-8")
    (tmp_path / "test.jsonl").write_text("".join(rows[8:]), encoding="utf-8")
    values = recipe(
        "toy-lm",
        stages=["finetune"],
        model={"init_from": "scratch", "context": 32},
        tokenizer={"vocab_size": 300},
        data={
            "finetune": {
                "task": "pairs",
                "train": "train.jsonl",
                "validation": "validation.jsonl",
                "test": "test.jsonl",
            }
        },
        train={"seed": 3, "device": "cpu", "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "eval_every": 10},
        finetune={"steps": 10},
        eval={"after_finetune": False, "bootstrap": 20},
        generate={"max_new_tokens": 4},
    )
    return str(save_recipe(tmp_path / "toy.yaml", values))


def test_an_unregistered_family_is_refused_with_the_families_there_are(tmp_path, textgen_here):
    path = toy_recipe(tmp_path)
    result = textgen_here("recipes", "validate", path, cwd=tmp_path)
    assert result.rc == 2
    assert "model.family" in result.err and "toy-lm" in result.err and "chatgpt" in result.err


def test_a_toy_family_and_layout_registered_in_their_own_module_train_evaluate_and_generate(
    toy_family, tmp_path, textgen_here
):
    from transformers import AutoModelForCausalLM

    from textgen_cli.models import role_of_model

    path = toy_recipe(tmp_path)
    assert textgen_here("recipes", "validate", path, cwd=tmp_path).rc == 0

    trained = textgen_here("finetune", "--recipe", path, "--json", cwd=tmp_path)
    assert trained.rc == 0, trained.err
    summary = json.loads(trained.out)
    assert summary["family"] == "toy-lm"
    final = tmp_path / "runs" / "toy" / "finetune" / "final"
    config = json.loads((final / "config.json").read_text(encoding="utf-8"))
    # saved as the toy family (a plain GPT-2 by its model_type), in the toy layout's sizes
    assert config["textgen_family"] == "toy-lm" and config["n_inner"] == 3 * config["n_embd"]
    assert role_of_model(AutoModelForCausalLM.from_pretrained(final)) is toy_family.ROLES["toy-lm"]

    scored = textgen_here("evaluate", "--recipe", path, "--json", cwd=tmp_path)
    assert scored.rc == 0, scored.err
    report = json.loads(scored.out)
    assert report["n_examples"] == 8 and "bleu" in report["metrics"]

    reply = textgen_here("generate", "--recipe", path, "--prompt", "say red twice", cwd=tmp_path)
    assert reply.rc == 0, reply.err
