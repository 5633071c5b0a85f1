"""Loading never runs code (docs/reliability.md, "Security"): no pickle in a checkpoint runs code, no
recipe runs code, no weights are read from pickles. Each test also shows its payload is live: an
unsafe loader does run it."""

from __future__ import annotations

import os
import shutil

import pytest

from harness import textgen

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _RunsCode:
    """Unpickling this runs a shell command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng.pt"])
def test_checkpoint_load_refuses_a_pickle_that_runs_code(name, tmp_path):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, get_cosine_with_min_lr_schedule_with_warmup

    from textgen_cli.core.errors import UserError
    from textgen_cli.training import checkpoint

    def fresh():
        model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=8, n_layer=1, n_head=2))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        return model, optimizer, get_cosine_with_min_lr_schedule_with_warmup(optimizer, 1, 10, min_lr_rate=0.1)

    model, optimizer, scheduler = fresh()
    model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    optimizer.step()
    saved = checkpoint.save(tmp_path, 1, model, optimizer, scheduler, {"metrics_lines": 0}, keep_last=2)
    assert checkpoint.load(saved, *fresh())["step"] == 1  # the checkpoint is valid

    marker = tmp_path / "pwned"
    torch.save({"state": _RunsCode(f"touch {marker}")}, saved / name)
    with pytest.raises(UserError, match="cannot be loaded"):
        checkpoint.load(saved, *fresh())
    assert not marker.exists()
    torch.load(saved / name, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()


def test_a_recipe_cannot_run_code(good, reliability_ws, tmp_path):
    import yaml

    marker = tmp_path / "pwned"
    text = f'description: !!python/object/apply:os.system ["touch {marker}"]\nmodel: {{family: chatgpt}}\nrun: {{name: good}}\n'
    (tmp_path / "evil.yaml").write_text(text)
    before = good()
    done = textgen(["pretrain", "--recipe", "evil.yaml"], cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "evil.yaml" in done.stderr and "line 1" in done.stderr and "Traceback" not in done.stderr
    assert not marker.exists()
    assert good() == before
    yaml.unsafe_load(text)  # the payload is live: an unsafe loader runs it
    assert marker.exists()


def test_load_checkpoint_refuses_pickled_weights(small_runs, tmp_path):
    import torch

    from textgen_cli.core.errors import UserError
    from textgen_cli.models import load_checkpoint

    model_dir = tmp_path / "pickled"
    shutil.copytree(small_runs / "small-chatgpt" / "pretrain" / "final", model_dir)
    (model_dir / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"weights": _RunsCode(f"touch {marker}")}, model_dir / "pytorch_model.bin")
    with pytest.raises(UserError, match="no .safetensors weights"):
        load_checkpoint(model_dir, "chatgpt")
    assert not marker.exists()
