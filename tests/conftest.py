"""Shared fixtures: the installed `textgen` entry point, a tiny workspace, a trained tokenizer,
and tiny end-to-end runs (trained once per session, shared by every test that inspects them)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "recipes"
FAMILIES = ("chatgpt", "sora")

# Never touch the network or the user's caches, in this process and in every subprocess.
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="textgen-tests-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_DATASETS_CACHE"] = str(_SESSION_TMP / "hf-datasets")
os.environ["TEXTGEN_CACHE_DIR"] = str(_SESSION_TMP / "textgen-cache")
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# Tiny models gain nothing from a second thread, and on a busy 2-core machine threads that wait on
# each other make every subprocess several times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["TRANSFORMERS_VERBOSITY"] = "error"


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


def textgen_exe() -> str:
    """The installed console script (what a user runs), not `python -m`."""
    found = shutil.which("textgen")
    if found:
        return found
    candidate = Path(sys.executable).parent / "textgen"
    assert candidate.is_file(), f"the textgen entry point is not installed beside {sys.executable}"
    return str(candidate)


def run_cli(args: list[str], cwd: Path, cache: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["TEXTGEN_CACHE_DIR"] = str(cache or (_SESSION_TMP / "textgen-cache"))
    return subprocess.run([textgen_exe(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def moby_lines(n: int, split: str = "train") -> list[str]:
    with (SHIPPED / "data" / "moby-dick" / f"{split}.txt").open(encoding="utf-8") as handle:
        return [next(handle) for _ in range(n)]


def write_tiny_pretrain(folder: Path, train_lines: int = 300, val_lines: int = 40, **sections: str) -> Path:
    """A 1-layer `chatgpt` pretraining recipe `tiny.yaml` on Moby-Dick lines in `folder`; keyword
    arguments replace a top-level section (`train="{batch_size: 4}"`)."""
    (folder / "train.txt").write_text("".join(moby_lines(train_lines)), encoding="utf-8")
    (folder / "val.txt").write_text("".join(moby_lines(val_lines, "validation")), encoding="utf-8")
    recipe = {
        "stages": "[pretrain]",
        "model": "{family: chatgpt, layers: 1, hidden: 32, heads: 2, ffn: 64, context: 32, dropout: 0.0}",
        "tokenizer": "{vocab_size: 400}",
        "data": "{pretrain: {train: train.txt, validation: val.txt}}",
        "train": "{batch_size: 8, log_every: 5, eval_every: 20, eval_batches: null}",
        "pretrain": "{steps: 40}",
        "checkpoint": "{every: 10}",
        **sections,
    }
    (folder / "tiny.yaml").write_text("".join(f"{key}: {value}\n" for key, value in recipe.items()), encoding="utf-8")
    return folder / "tiny.yaml"


@pytest.fixture(scope="session")
def moby_texts() -> list[str]:
    return [line.strip() for line in moby_lines(400) if line.strip()]


@pytest.fixture(scope="session")
def tokenizer(moby_texts):
    """A small byte-level BPE tokenizer trained like pretrain does (no cache involved)."""
    from textgen_cli.tokenizer import train_tokenizer

    return train_tokenizer(moby_texts, vocab_size=400, min_frequency=2)


# ---------------------------------------------------------------- tiny end-to-end workspace

TINY_RECIPE = """\
description: "tiny {family} for the test suite"
stages: [pretrain, finetune]
model: {{family: {family}, layers: 1, hidden: 32, heads: 2, ffn: 64, context: 64, dropout: 0.1}}
tokenizer: {{vocab_size: 400}}
data:
  pretrain: {{train: data/pretrain-train.txt, validation: data/pretrain-val.txt}}
  finetune: {{task: pairs, train: data/finetune-train.jsonl, validation: data/finetune-val.jsonl}}
prompt: {{system: "Modern English."}}
train: {{seed: 7, device: cpu, batch_size: 8, lr: 3.0e-3, warmup_steps: 5, log_every: 5, eval_every: 20, eval_batches: 2}}
pretrain: {{steps: 40}}
finetune: {{steps: 40}}
"""


def tiny_extra() -> str:
    """Recipe lines that keep generation settings (where the schema has them) within a tiny context, so
    that training tests test training only (test_recipe checks small contexts validate with defaults)."""
    from textgen_cli.recipe import all_keys

    return "generate: {max_new_tokens: 8}\n" if "generate.max_new_tokens" in all_keys() else ""


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    """tmp/recipe/{tiny-chatgpt,tiny-sora}.yaml with data/ beside them; runs are made from tmp/ (the cwd),
    so the recipe's relative data paths only work if they resolve against the recipe file."""
    root = tmp_path_factory.mktemp("workspace")
    data = root / "recipe" / "data"
    data.mkdir(parents=True)
    (data / "pretrain-train.txt").write_text("".join(moby_lines(200)), encoding="utf-8")
    (data / "pretrain-val.txt").write_text("".join(moby_lines(40, "validation")), encoding="utf-8")
    # the shortest ~240 verse pairs, so that most fit a 64-token context
    with (SHIPPED / "data" / "bible-modern" / "train.jsonl").open(encoding="utf-8") as handle:
        rows = handle.readlines()
    rows.sort(key=lambda line: (lambda r: len(r["source"]) + len(r["target"]))(json.loads(line)))
    (data / "finetune-train.jsonl").write_text("".join(rows[:200]), encoding="utf-8")
    (data / "finetune-val.jsonl").write_text("".join(rows[200:240]), encoding="utf-8")
    for family in FAMILIES:
        (root / "recipe" / f"tiny-{family}.yaml").write_text(TINY_RECIPE.format(family=family) + tiny_extra(), encoding="utf-8")
    return root


@dataclass
class TrainedRun:
    family: str
    cwd: Path
    recipe: Path
    pretrain: subprocess.CompletedProcess
    finetune: subprocess.CompletedProcess

    def stage_dir(self, stage: str) -> Path:
        return self.cwd / "runs" / f"tiny-{self.family}" / stage


_RUNS: dict[str, TrainedRun] = {}


def trained_run(workspace: Path, family: str) -> TrainedRun:
    """pretrain then finetune through the installed entry point, once per family per session."""
    if family not in _RUNS:
        recipe = workspace / "recipe" / f"tiny-{family}.yaml"
        args = ["--recipe", f"recipe/{recipe.name}", "--json"]
        pretrain = run_cli(["pretrain", *args], cwd=workspace)
        finetune = run_cli(["finetune", *args], cwd=workspace) if pretrain.returncode == 0 else pretrain
        _RUNS[family] = TrainedRun(family, workspace, recipe, pretrain, finetune)
    return _RUNS[family]


@pytest.fixture(scope="session", params=FAMILIES)
def trained(request, workspace) -> TrainedRun:
    return trained_run(workspace, request.param)
