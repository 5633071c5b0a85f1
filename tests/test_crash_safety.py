"""Crash safety of checkpoints (docs/reliability.md, "Run directories and checkpoints"): SIGKILL at any point of a checkpoint save
leaves a newest checkpoint that loads and no incomplete `step-*` directory, and `--resume` ends like
an uninterrupted run; a crash between logging and checkpointing logs every step once after resuming;
keep_last pruning keeps the newest checkpoints and never removes the one just written.

The SIGKILLed and resumed runs are forked from harness's fork server; the others run in this process."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness import CHECKPOINT_FILES, PRETRAIN_STEPS, assert_same_training, logged_step, spawn

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def incomplete_checkpoints(work: Path) -> list[str]:
    return [
        d.name
        for d in sorted((work / "checkpoints").glob("step-*"))
        if not all((d / f).is_file() for f in CHECKPOINT_FILES)
    ]


def load_into_fresh_model(path: Path, like: Path, family: str = "chatgpt", steps: int = PRETRAIN_STEPS):
    """checkpoint.load into a new model (shaped like the saved model `like`), optimizer and scheduler."""
    import torch
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    from textgen_cli.models import load_checkpoint
    from textgen_cli.training import checkpoint
    from textgen_cli.training.optim import param_groups

    model = load_checkpoint(like, family)
    optimizer = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-3)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=10, num_training_steps=steps, min_lr_rate=0.1
    )
    state = checkpoint.load(path, model, optimizer, scheduler)
    return state, model, optimizer


# Where in a checkpoint save to SIGKILL (checkpoint.every=1, so a save is nearly always under way).
KILL_POINTS: dict[str, Callable[[Path, list[str]], bool]] = {
    "temp dir created": lambda folder, names: any(n.startswith(".tmp-") for n in names),
    "optimizer written": lambda folder, names: any(
        (folder / n / "optimizer.pt").exists() for n in names if n.startswith(".tmp-")
    ),
    "state written": lambda folder, names: any(
        (folder / n / "state.json").exists() for n in names if n.startswith(".tmp-")
    ),
    "pointer moving": lambda folder, names: ".latest.tmp" in names,
    "pruning": lambda folder, names: sum(n.startswith("step-") for n in names) > 2,
}
RESUMED_KILL_POINTS = ("temp dir created", "pruning")


def test_sigkill_during_checkpoint_saves_leaves_a_loadable_checkpoint(references, reliability_ws, tmp_path):
    from textgen_cli.training import checkpoint

    recipe = str(reliability_ws / "chatgpt.yaml")
    runs = {
        point: spawn(
            ["pretrain", "--recipe", recipe, f"run.name=k{i}", "checkpoint.every=1"], tmp_path, reliability_ws / "logs"
        )
        for i, point in enumerate(KILL_POINTS)
    }
    work = {point: tmp_path / "runs" / f"k{i}" / "pretrain.partial" for i, point in enumerate(KILL_POINTS)}
    how: dict[str, str] = {}
    deadline = time.monotonic() + 240
    while len(how) < len(runs):
        assert time.monotonic() < deadline, f"timed out; killed so far: {how}"
        for point, proc in runs.items():
            if point in how:
                continue
            if proc.poll() is not None:
                pytest.fail(f"{point}: textgen exited with {proc.poll()} before it was killed:\n{proc.stderr}")
            folder = work[point] / "checkpoints"
            try:
                names = os.listdir(folder)
                if "latest" not in names:  # wait for a first complete checkpoint
                    continue
                reached = KILL_POINTS[point](folder, names)
            except OSError:  # a directory renamed or removed while we looked
                continue
            step = logged_step(work[point] / "metrics.jsonl")
            if reached or step >= 40:  # never let it finish: kill at step 40 at the latest
                proc.send(signal.SIGKILL)
                how[point] = "at the point" if reached else f"at step {step}, point not seen"
        time.sleep(0.0005)

    print("SIGKILL points:", how)  # shown with -rP or on failure
    ref = references.pretrain("chatgpt")
    for point, proc in runs.items():
        assert proc.wait() == -signal.SIGKILL
        assert not incomplete_checkpoints(work[point]), f"killed {how[point]} ({point})"
        found = checkpoint.latest(work[point])
        assert found is not None, point
        state, _, optimizer = load_into_fresh_model(found, ref / "final")
        assert state["step"] == int(found.name.removeprefix("step-")), point
        assert optimizer.state, f"{point}: the optimizer state is empty"
        assert state["metrics_lines"] <= len((work[point] / "metrics.jsonl").read_text().splitlines())

    # --resume takes over the dead process's lock and finishes exactly like the uninterrupted run
    # (checkpoint.every=0: fewer saves, same training).
    resumed = {
        point: spawn(
            ["pretrain", "--recipe", recipe, f"run.name=k{list(runs).index(point)}", "checkpoint.every=0", "--resume"],
            tmp_path,
            reliability_ws / "logs",
        )
        for point in RESUMED_KILL_POINTS
    }
    for point, proc in resumed.items():
        assert proc.wait() == 0, proc.stderr
        assert "resumed at step" in proc.stderr
        assert_same_training(ref, work[point].with_name("pretrain"), min_lines=(8, 5))


def test_a_crash_while_pruning_leaves_no_incomplete_checkpoint(reliability_ws, monkeypatch, tmp_path):
    """Simulates a SIGKILL in the middle of deleting an old checkpoint (keep_last): what is left
    under a `step-*` name must still be complete (or gone)."""
    from textgen_cli.recipe import load_recipe
    from textgen_cli.training import checkpoint
    from textgen_cli.training.pretrain import run_pretrain

    class Killed(BaseException):
        pass

    real_rmtree = shutil.rmtree

    def dying_rmtree(path, *args, **kwargs):
        path = Path(path)
        # a checkpoint being deleted, under its own name or renamed out of the way first
        if checkpoint.PREFIX in path.name and (path / "model.safetensors").exists():
            (path / "model.safetensors").unlink()  # rmtree got this far when the process died
            raise Killed
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", dying_rmtree)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Killed):
        run_pretrain(
            load_recipe(
                str(reliability_ws / "chatgpt.yaml"),
                ["run.name=p", "pretrain.steps=6", "checkpoint.every=1", "checkpoint.keep_last=1"],
            )
        )
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    work = tmp_path / "runs" / "p" / "pretrain.partial"
    assert checkpoint.latest(work) == work / "checkpoints" / "step-0000002"
    assert not incomplete_checkpoints(work)


def test_a_crash_after_logging_then_resume_logs_every_step_once(reliability_ws, monkeypatch, tmp_path):
    """A crash between logging step 10 and checkpointing it: --resume goes back to step 5 and must
    drop the lines logged after that checkpoint, then log them again exactly once."""
    from textgen_cli.recipe import load_recipe
    from textgen_cli.training import checkpoint
    from textgen_cli.training.pretrain import run_pretrain

    class Killed(BaseException):
        pass

    real_save = checkpoint.save

    def dies_at_step_10(root, step, *args, **kwargs):
        if step == 10:
            raise Killed
        return real_save(root, step, *args, **kwargs)

    monkeypatch.chdir(tmp_path)
    recipe = str(reliability_ws / "chatgpt.yaml")
    settings = ["pretrain.steps=20", "checkpoint.every=5"]
    run_pretrain(load_recipe(recipe, ["run.name=whole", *settings]))
    monkeypatch.setattr(checkpoint, "save", dies_at_step_10)
    with pytest.raises(Killed):
        run_pretrain(load_recipe(recipe, ["run.name=crash", *settings]))
    work = tmp_path / "runs" / "crash" / "pretrain.partial"
    assert logged_step(work / "metrics.jsonl") == 10 and checkpoint.latest(work).name == "step-0000005"
    monkeypatch.setattr(checkpoint, "save", real_save)
    run_pretrain(load_recipe(recipe, ["run.name=crash", *settings, "resume=auto"]))
    assert_same_training(
        tmp_path / "runs" / "whole" / "pretrain", tmp_path / "runs" / "crash" / "pretrain", min_lines=(4, 3)
    )


# ---------------------------------------------------------------------------------- keep_last


def test_keep_last_keeps_only_the_newest_checkpoints(reliability_ws, monkeypatch, tmp_path):
    from textgen_cli.recipe import load_recipe
    from textgen_cli.training import checkpoint
    from textgen_cli.training.pretrain import run_pretrain

    seen: list[tuple[int, list[str], str]] = []
    real_save = checkpoint.save

    def recording_save(root, step, *args, **kwargs):
        path = real_save(root, step, *args, **kwargs)
        folder = root / checkpoint.CHECKPOINTS
        seen.append(
            (
                step,
                sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")),
                (folder / checkpoint.LATEST).read_text(),
            )
        )
        return path

    monkeypatch.setattr(checkpoint, "save", recording_save)
    monkeypatch.chdir(tmp_path)
    run_pretrain(
        load_recipe(
            str(reliability_ws / "chatgpt.yaml"),
            [
                "run.name=keep",
                "pretrain.steps=8",
                "checkpoint.every=1",
                "checkpoint.keep_last=3",
                "checkpoint.keep_final=false",
            ],
        )
    )
    assert [step for step, _, _ in seen] == list(range(1, 8))  # every step but the last (the final model)
    for step, names, pointer in seen:
        kept = [f"step-{s:07d}" for s in range(max(1, step - 2), step + 1)]
        assert names == ["latest", *kept], f"after the save of step {step}"
        assert pointer == f"step-{step:07d}"
    assert not (tmp_path / "runs" / "keep" / "pretrain" / "checkpoints").exists()  # a finished run keeps none


def test_pruning_never_deletes_the_newest_checkpoint(tmp_path):
    """A stale higher-numbered checkpoint (left by an earlier attempt) must not push the checkpoint
    just written out of keep_last."""
    from textgen_cli.training import checkpoint

    folder = tmp_path / "checkpoints"
    for step in (5, 6, 9):
        (folder / f"step-{step:07d}").mkdir(parents=True)
    (folder / ".tmp-step-0000007").mkdir()
    checkpoint.prune(folder, keep_last=1, newest=folder / "step-0000006")
    assert sorted(p.name for p in folder.iterdir()) == ["step-0000006", "step-0000009"]
