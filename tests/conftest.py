"""Shared fixtures: an offline environment for the whole session, a trained tokenizer, tiny end-to-end
runs (trained once per session, shared by every test that inspects them), the CLI run in this process,
and the reliability workspace. Helpers that tests import are in harness.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import (
    FAMILIES,
    OFFLINE,
    References,
    Result,
    end_to_end_recipe,
    in_process,
    moby_lines,
    save_recipe,
    shortest_verse_pairs,
    stop_background_runs,
    textgen,
    tree_snapshot,
    write_reliability_workspace,
)

# Never touch the network or the user's caches, in this process and in every subprocess.
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="textgen-tests-"))
os.environ.update(OFFLINE)
os.environ["HF_DATASETS_CACHE"] = str(_SESSION_TMP / "hf-datasets")
os.environ["TEXTGEN_CACHE_DIR"] = str(_SESSION_TMP / "textgen-cache")
# Tiny models gain nothing from a second thread, and on a busy 2-core machine threads that wait on
# each other make every subprocess several times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def moby_texts() -> list[str]:
    return [line.strip() for line in moby_lines(400) if line.strip()]


@pytest.fixture(scope="session")
def tokenizer(moby_texts):
    """A small byte-level BPE tokenizer trained like pretrain does (no cache involved)."""
    from textgen_cli.data.tokenizer import train_tokenizer

    return train_tokenizer(moby_texts, vocab_size=400, min_frequency=2)


# ---------------------------------------------------------------- tiny end-to-end workspace


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    """tmp/recipe/{tiny-chatgpt,tiny-sora}.yaml with data/ beside them; runs are made from tmp/ (the cwd),
    so the recipe's relative data paths only work if they resolve against the recipe file."""
    root = tmp_path_factory.mktemp("workspace")
    data = root / "recipe" / "data"
    data.mkdir(parents=True)
    (data / "pretrain-train.txt").write_text("".join(moby_lines(200)), encoding="utf-8")
    (data / "pretrain-val.txt").write_text("".join(moby_lines(40, "validation")), encoding="utf-8")
    rows = shortest_verse_pairs()  # most of the first ~240 fit a 64-token context
    (data / "finetune-train.jsonl").write_text("".join(rows[:200]), encoding="utf-8")
    (data / "finetune-val.jsonl").write_text("".join(rows[200:240]), encoding="utf-8")
    for family in FAMILIES:
        save_recipe(root / "recipe" / f"tiny-{family}.yaml", end_to_end_recipe(family))
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
        pretrain = textgen(["pretrain", *args], cwd=workspace)
        finetune = textgen(["finetune", *args], cwd=workspace) if pretrain.returncode == 0 else pretrain
        _RUNS[family] = TrainedRun(family, workspace, recipe, pretrain, finetune)
    return _RUNS[family]


@pytest.fixture(scope="session", params=FAMILIES)
def trained(request, workspace) -> TrainedRun:
    return trained_run(workspace, request.param)


# ---------------------------------------------------------------- running the CLI in this process


@pytest.fixture
def textgen_here(monkeypatch, capsys) -> Callable[..., Result]:
    """`textgen_here(*ARGS, cwd=FOLDER)`: `textgen ARGS` run in this process (harness.in_process)."""
    return lambda *args, cwd: in_process(list(args), cwd, monkeypatch, capsys)


@pytest.fixture(scope="module")
def one_torch_thread():
    """In-process runs on one thread, like the subprocesses: tiny models gain nothing from more,
    and on a busy 2-core machine spinning OpenMP threads slow them down many times over."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- the reliability workspace
# Shared by the tests of stopped, killed and failing runs (harness.write_reliability_workspace), once
# per session: the uninterrupted reference runs are trained once for all of them.


@pytest.fixture(scope="session")
def reliability_ws(tmp_path_factory) -> Iterator[Path]:
    yield write_reliability_workspace(tmp_path_factory.mktemp("reliability"))
    stop_background_runs()


@pytest.fixture(scope="session")
def references(reliability_ws) -> References:
    """The uninterrupted runs, both families' pretraining started in the background at once."""
    found = References(reliability_ws)
    for family in FAMILIES:
        found.start_pretrain(family)
    return found


@pytest.fixture(scope="session")
def small_runs(reliability_ws) -> Path:
    """Finished tiny runs made in this process: runs/small-{chatgpt,sora}/pretrain and small-chatgpt/finetune."""
    from textgen_cli.recipe import load_recipe
    from textgen_cli.training.finetune import run_finetune
    from textgen_cli.training.pretrain import run_pretrain

    ws = reliability_ws
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ws)
        for family in FAMILIES:
            run_pretrain(
                load_recipe(
                    str(ws / f"{family}.yaml"), [f"run.name=small-{family}", "pretrain.steps=4", "checkpoint.every=0"]
                )
            )
        run_finetune(
            load_recipe(str(ws / "chatgpt.yaml"), ["run.name=small-chatgpt", "finetune.steps=2", "checkpoint.every=0"])
        )
    return ws / "runs"


@pytest.fixture
def good(small_runs, tmp_path) -> Callable[[], dict[str, str]]:
    """tmp_path/runs/good: a finished pretrain + finetune run; returns a snapshot of tmp_path/runs."""
    shutil.copytree(small_runs / "small-chatgpt", tmp_path / "runs" / "good")
    return lambda: tree_snapshot(tmp_path / "runs")
