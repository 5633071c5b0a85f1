"""Continuing a finished stage: it keeps its last checkpoint (checkpoint.keep_final), and
`--resume` with more steps carries on from it, on the schedule of a run planned for the new total."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from harness import write_tiny_pretrain

if TYPE_CHECKING:
    from textgen_cli.core.results import RunSummary

SETTINGS = ["train.log_every=5", "train.eval_every=5", "checkpoint.every=0"]


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    folder = tmp_path_factory.mktemp("continue")
    write_tiny_pretrain(folder, train={"warmup_steps": 3, "eval_batches": 2})  # log_every, eval_every: SETTINGS
    return folder


def pretrain(space, monkeypatch, *overrides: str) -> RunSummary:
    from textgen_cli.recipe import load_recipe
    from textgen_cli.training.pretrain import run_pretrain

    monkeypatch.chdir(space)
    return run_pretrain(load_recipe(str(space / "tiny.yaml"), [*SETTINGS, *overrides]))


def metrics(stage) -> list[dict]:
    return [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]


def checkpoints(stage) -> list[str]:
    return sorted(p.name for p in (stage / "checkpoints").glob("step-*"))


def test_resume_with_more_steps_continues_a_finished_stage(space, monkeypatch):
    stage = space / "runs" / "more" / "pretrain"
    pretrain(space, monkeypatch, "run.name=more", "pretrain.steps=10")
    assert checkpoints(stage) == ["step-0000010"]  # kept by default
    first = metrics(stage)

    summary = pretrain(space, monkeypatch, "run.name=more", "pretrain.steps=20", "resume=auto")
    assert summary.steps == 20 and summary.resumed is True
    assert checkpoints(stage) == ["step-0000020"]
    continued = metrics(stage)
    assert continued[: len(first)] == first  # the first 10 steps' record is kept as it was
    assert [r["step"] for r in continued[len(first) :] if "loss" in r] == [15, 20]

    # the schedule after step 10 is the one a 20-step run follows: cosine stretched to the new total
    straight = pretrain(space, monkeypatch, "run.name=straight", "pretrain.steps=20")
    assert straight.steps == 20
    planned = {r["step"]: r["lr"] for r in metrics(space / "runs" / "straight" / "pretrain") if "lr" in r}
    assert [(r["step"], pytest.approx(r["lr"], rel=1e-9)) for r in continued if "lr" in r and r["step"] > 10] == [
        (15, planned[15]),
        (20, planned[20]),
    ]
    assert summary.tokens == straight.tokens  # the same batches, step for step


def test_resume_without_more_steps_is_refused_and_changes_nothing(space, monkeypatch):
    from textgen_cli.core.errors import UserError

    stage = space / "runs" / "same" / "pretrain"
    pretrain(space, monkeypatch, "run.name=same", "pretrain.steps=5")
    before = (stage / "metrics.jsonl").read_text(), (stage / "final" / "model.safetensors").read_bytes()
    with pytest.raises(
        UserError,
        match=r"'runs/same/pretrain' is a finished stage of 5 steps: --resume continues it only with more steps \(e\.g\. pretrain\.steps=10\); without --resume it is trained afresh$",
    ):
        pretrain(space, monkeypatch, "run.name=same", "pretrain.steps=5", "resume=auto")
    assert ((stage / "metrics.jsonl").read_text(), (stage / "final" / "model.safetensors").read_bytes()) == before
    assert not stage.with_name("pretrain.partial").exists() and not stage.with_name("pretrain.lock").exists()


def test_keep_final_false_keeps_no_checkpoint(space, monkeypatch):
    stage = space / "runs" / "lean" / "pretrain"
    pretrain(space, monkeypatch, "run.name=lean", "pretrain.steps=5", "checkpoint.keep_final=false")
    assert not (stage / "checkpoints").exists()
    summary = pretrain(
        space, monkeypatch, "run.name=lean", "pretrain.steps=10", "checkpoint.keep_final=false", "resume=auto"
    )
    assert summary.resumed is False  # nothing to continue from: trained afresh
