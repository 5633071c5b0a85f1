"""Run locks (docs/reliability.md, "Locks"): a stage directory locked by a live process refuses a
second run (exit 2, naming the process and the lock file, touching nothing); a SIGKILLed holder never
leaves a stale lock."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness import REPO

pytestmark = pytest.mark.usefixtures("one_torch_thread")


HOLD_LOCK = """
import sys, time
from pathlib import Path
from textgen_cli.training.run_dir import RunDir
run = RunDir(Path(sys.argv[1]))  # kept: a lock that is garbage-collected is released
run._lock()
print("locked", flush=True)
time.sleep(120)
"""


def hold_lock(stage: Path) -> subprocess.Popen:
    """Another process that takes the stage's lock the way a run does, then waits."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(stage)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_live_lock_refuses_a_second_run(good, reliability_ws, textgen_here, tmp_path):
    before = good()
    owner = hold_lock(tmp_path / "runs" / "good" / "pretrain")
    try:
        lock = tmp_path / "runs" / "good" / "pretrain.lock"
        result = textgen_here(
            "pretrain",
            "--recipe",
            str(reliability_ws / "chatgpt.yaml"),
            "run.name=good",
            "pretrain.steps=2",
            cwd=tmp_path,
        )
        assert result.rc == 2, result.err
        assert (
            f"error: run directory '{Path('runs/good/pretrain')}' is in use by process {owner.pid} (lock file {Path('runs/good/pretrain.lock')}); wait for it or stop it"
            in result.err
        )
        assert "Traceback" not in result.err
        assert json.loads(lock.read_text())["pid"] == owner.pid  # the loser leaves the owner's lock alone
    finally:
        owner.kill()
        owner.wait()
    (tmp_path / "runs" / "good" / "pretrain.lock").unlink()
    assert good() == before


def test_a_killed_holder_never_leaves_a_stale_lock(good, reliability_ws, textgen_here, tmp_path):
    """The kernel drops a SIGKILLed process's lock: the file it leaves locks nothing, and the next
    run takes it without a word and removes it when done."""
    lock = tmp_path / "runs" / "good" / "pretrain.lock"
    owner = hold_lock(tmp_path / "runs" / "good" / "pretrain")
    owner.send_signal(signal.SIGKILL)
    assert owner.wait() == -signal.SIGKILL
    assert json.loads(lock.read_text())["pid"] == owner.pid  # the dead holder's file is still there
    result = textgen_here(
        "pretrain", "--recipe", str(reliability_ws / "chatgpt.yaml"), "run.name=good", "pretrain.steps=2", cwd=tmp_path
    )
    assert result.rc == 0, result.err
    assert "lock " not in result.err and "stale" not in result.err
    assert not lock.exists()
    assert json.loads((tmp_path / "runs" / "good" / "pretrain" / "summary.json").read_text())["steps"] == 2
