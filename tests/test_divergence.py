"""Divergence (docs/reliability.md, "Divergence"): a non-finite loss stops the run (exit 1) and keeps the
last good checkpoint, or is skipped up to train.max_skips with train.on_nonfinite=skip."""

from __future__ import annotations

import json
import math
import re

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(reliability_ws, textgen_here, tmp_path):
    """A huge learning rate without clipping or warmup: step 1's update blows the weights up."""
    from safetensors.torch import load_file

    from textgen_cli.training import checkpoint

    overrides = [
        "run.name=div",
        "pretrain.steps=20",
        "train.lr=1e30",
        "train.clip_grad=0",
        "train.warmup_steps=0",
        "checkpoint.every=1",
    ]
    result = textgen_here("pretrain", "--recipe", str(reliability_ws / "chatgpt.yaml"), *overrides, cwd=tmp_path)
    assert result.rc == 1, result.err
    match = re.search(
        r"non-finite (loss|gradient) at step (\d+); stopping; the last good checkpoint is (\S+)", result.err
    )
    assert match, result.err
    assert "Traceback" not in result.err
    step = int(match.group(2))
    work = tmp_path / "runs" / "div" / "pretrain.partial"
    found = checkpoint.latest(work)
    assert found is not None and found.name == f"step-{step - 1:07d}" and str(found).endswith(match.group(3))
    assert all(bool(t.isfinite().all()) for t in load_file(found / "model.safetensors").values())
    assert not (tmp_path / "runs" / "div" / "pretrain").exists()
    assert not (tmp_path / "runs" / "div" / "pretrain.lock").exists()


@pytest.fixture
def nan_at_steps(monkeypatch):
    """Make the training loss NaN at the given optimizer steps (grad_accum=1: one call per step)."""
    from textgen_cli.training import step

    real = step.token_loss_sum

    def install(steps: set[int]) -> None:
        calls = {"n": 0}

        def flaky(model, batch, causal):
            loss, n_tokens = real(model, batch, causal)
            if model.training:
                calls["n"] += 1
                if calls["n"] in steps:
                    loss = loss * float("nan")
            return loss, n_tokens

        monkeypatch.setattr(step, "token_loss_sum", flaky)

    return install


def test_on_nonfinite_skip_skips_then_stops_after_max_skips(reliability_ws, textgen_here, nan_at_steps, tmp_path):
    from textgen_cli.training import checkpoint

    nan_at_steps({4, 6, 7, 9})
    overrides = [
        "run.name=skip",
        "pretrain.steps=12",
        "train.on_nonfinite=skip",
        "train.max_skips=2",
        "checkpoint.every=5",
    ]
    result = textgen_here("pretrain", "--recipe", str(reliability_ws / "chatgpt.yaml"), *overrides, cwd=tmp_path)
    assert result.rc == 1, result.err
    assert "step 4: non-finite loss, step skipped (1/2)" in result.err
    assert "step 6: non-finite loss, step skipped (2/2)" in result.err
    assert "non-finite loss at step 7 after 2 skipped steps; stopping" in result.err
    work = tmp_path / "runs" / "skip" / "pretrain.partial"
    assert checkpoint.latest(work) == work / "checkpoints" / "step-0000005"


def test_on_nonfinite_skip_finishes_when_skips_stay_under_max_skips(
    reliability_ws, textgen_here, nan_at_steps, tmp_path
):
    nan_at_steps({3})
    overrides = ["run.name=skip1", "pretrain.steps=8", "train.on_nonfinite=skip", "train.max_skips=2", "--json"]
    result = textgen_here("pretrain", "--recipe", str(reliability_ws / "chatgpt.yaml"), *overrides, cwd=tmp_path)
    assert result.rc == 0, result.err
    summary = json.loads(result.out)
    assert summary["skipped_steps"] == 1 and math.isfinite(summary["final_val_loss"])
