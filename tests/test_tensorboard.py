"""The optional TensorBoard series: the same values as metrics.jsonl, and a clear error without the extra."""

from __future__ import annotations

import builtins
import json

import pytest

from conftest import moby_lines

RECIPE = """\
stages: [pretrain]
model: {family: chatgpt, layers: 1, hidden: 32, heads: 2, ffn: 64, context: 32}
tokenizer: {vocab_size: 400}
data: {pretrain: {train: train.txt, validation: val.txt}}
train: {batch_size: 8, log_every: 5, eval_every: 10, eval_batches: 2, tensorboard: true}
pretrain: {steps: 20}
"""


@pytest.fixture
def recipe(tmp_path, monkeypatch):
    (tmp_path / "train.txt").write_text("".join(moby_lines(200)), encoding="utf-8")
    (tmp_path / "val.txt").write_text("".join(moby_lines(40, "validation")), encoding="utf-8")
    (tmp_path / "tiny.yaml").write_text(RECIPE, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "tiny.yaml"


def test_tensorboard_events_hold_the_metrics_series(recipe, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from textgen_cli.pretrain import run_pretrain
    from textgen_cli.recipe import load_recipe

    run_pretrain(load_recipe(str(recipe)))
    run = tmp_path / "runs" / "tiny" / "pretrain"
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in logged if "loss" in r]
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars("loss")] == losses
    assert [e.step for e in events.Scalars("val_loss")] == [r["step"] for r in logged if "val_loss" in r]


def test_tensorboard_without_the_package_is_a_clear_error(recipe, tmp_path, monkeypatch):
    from textgen_cli.errors import UserError
    from textgen_cli.pretrain import run_pretrain
    from textgen_cli.recipe import load_recipe

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(UserError, match=r"pip install 'textgen-cli\[tensorboard\]'"):
        run_pretrain(load_recipe(str(recipe)))
    assert not (tmp_path / "runs" / "tiny" / "pretrain.partial").exists()
    assert not (tmp_path / "runs" / "tiny" / "pretrain.lock").exists()
