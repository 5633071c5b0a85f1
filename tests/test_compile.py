"""`train.compile=true`: the transformer blocks are compiled in place (torch.compile, inductor on
CPU), on every path that calls them, and the run logs the eager run's losses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import cli_env, write_tiny_pretrain

pytestmark = pytest.mark.slow


def pretrain(folder: Path, *overrides: str) -> list[dict]:
    env = cli_env(TORCHINDUCTOR_CACHE_DIR=str(folder / "inductor"))
    done = subprocess.run(
        [sys.executable, "-m", "textgen_cli", "pretrain", "-r", "tiny.yaml", *overrides],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    name = next(o.split("=", 1)[1] for o in overrides if o.startswith("run.name="))
    return [json.loads(line) for line in (folder / "runs" / name / "pretrain/metrics.jsonl").read_text().splitlines()]


def test_compiled_blocks_train_like_eager(tmp_path):
    write_tiny_pretrain(
        tmp_path,
        200,
        20,
        train={"log_every": 2, "eval_every": 100, "eval_batches": 2},
        pretrain={"steps": 6},
        checkpoint={"every": 0},
    )
    eager = pretrain(tmp_path, "run.name=eager")
    compiled = pretrain(tmp_path, "run.name=compiled", "train.compile=true")
    # the compiled kernels ran: inductor wrote code for them
    assert any((tmp_path / "inductor").rglob("*.py")), "nothing was compiled"
    assert [r["step"] for r in eager] == [r["step"] for r in compiled]
    for a, b in zip(eager, compiled):
        key = "loss" if "loss" in a else "val_loss"
        assert abs(a[key] - b[key]) < 1e-4, (a, b)
    # checkpoint-free run: final/ is a plain model with the usual parameter names
    weights = (tmp_path / "runs/compiled/pretrain/final/model.safetensors").read_bytes()
    assert b"_orig_mod" not in weights[:20000] and b"transformer.h.0" in weights[:20000]
