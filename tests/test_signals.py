"""Stopping a run with a signal (docs/reliability.md, "Signals"): SIGTERM and SIGINT stop at the next
step with a checkpoint (exit 143 / 130), and `--resume` then logs the same losses and ends with the same
weights, bit for bit, as an uninterrupted run (both families, pretrain and finetune); a second signal
exits at once.

Signals need real processes: the interrupted runs are the installed `textgen` script; the reference
and resumed runs are forked from harness's fork server. The reference runs (conftest `references`)
are shared with test_crash_safety."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import pytest

from harness import FAMILIES, PRETRAIN_STEPS, assert_same_training, cli_env, logged_step, spawn, wait_until

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("family", FAMILIES)
def test_sigterm_then_resume_is_bit_identical_to_an_uninterrupted_run(family, references, reliability_ws, tmp_path):
    from textgen_cli.training import checkpoint

    recipe = str(reliability_ws / f"{family}.yaml")
    stage = tmp_path / "runs" / "b" / "pretrain"
    work = stage.with_name("pretrain.partial")
    run = spawn(["pretrain", "--recipe", recipe, "run.name=b"], tmp_path, reliability_ws / "logs", entry_point=True)
    wait_until(lambda: logged_step(work / "metrics.jsonl") >= 15, run, "step 15")
    run.send(signal.SIGTERM)
    assert run.wait() == 143, run.stderr
    stopped = re.search(r"interrupted at step (\d+); checkpoint saved", run.stderr)
    assert stopped, run.stderr
    assert "Traceback" not in run.stderr
    assert not stage.exists() and not stage.with_name("pretrain.lock").exists()
    found = checkpoint.latest(work)
    assert found is not None and found.name == f"step-{int(stopped.group(1)):07d}"
    saved = sorted(p.name for p in (work / "checkpoints").glob("step-*"))
    assert found.name in saved and len(saved) <= 2  # checkpoint.keep_last=2

    resumed = spawn(["pretrain", "--recipe", recipe, "run.name=b", "--resume"], tmp_path, reliability_ws / "logs")
    assert resumed.wait() == 0, resumed.stderr
    assert f"resumed at step {stopped.group(1)}/{PRETRAIN_STEPS}" in resumed.stderr
    assert not work.exists() and [p.name for p in (stage / "checkpoints").glob("step-*")] == [
        f"step-{PRETRAIN_STEPS:07d}"
    ]  # checkpoint.keep_final
    assert_same_training(references.pretrain(family), stage, min_lines=(8, 5))
    assert json.loads((stage / "summary.json").read_text())["resumed"] is True


def test_sigint_during_finetune_exits_130_and_resume_is_bit_identical(references, reliability_ws, tmp_path):
    start = references.pretrain("chatgpt") / "final"
    references.start_finetune("chatgpt")
    args = ["finetune", "--recipe", str(reliability_ws / "chatgpt.yaml"), "run.name=b", f"model.init_from={start}"]
    stage = tmp_path / "runs" / "b" / "finetune"
    run = spawn(args, tmp_path, reliability_ws / "logs", entry_point=True)
    wait_until(lambda: logged_step(stage.with_name("finetune.partial") / "metrics.jsonl") >= 10, run, "step 10")
    run.send(signal.SIGINT)
    assert run.wait() == 130, run.stderr
    assert "SIGINT: saving a checkpoint" in run.stderr and "continue with --resume" in run.stderr
    assert "Traceback" not in run.stderr
    assert not stage.exists()

    resumed = spawn([*args, "--resume"], tmp_path, reliability_ws / "logs")
    assert resumed.wait() == 0, resumed.stderr
    assert "resumed at step" in resumed.stderr
    assert_same_training(references.finetune("chatgpt"), stage, min_lines=(8, 5))


def test_a_second_signal_exits_at_once(reliability_ws):
    """The first SIGTERM asks for a checkpoint at the next step; a second one exits immediately with 143."""
    code = (
        "import os, signal, time\n"
        "from textgen_cli.training.signals import StopSignals\n"
        "with StopSignals() as s:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(0.2)\n"
        "    assert s.received == signal.SIGTERM\n"
        "    print('first signal noted', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(10)\n"
        "print('not reached')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 143, done.stderr
    assert done.stdout == "first signal noted\n"
    assert "send it again to exit at once" in done.stderr
