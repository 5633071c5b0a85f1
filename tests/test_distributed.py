"""Data-parallel training on CPU (gloo) through torchrun: the same losses as one process with the
same global batch, identical weights on every rank, and interrupt + resume across two processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import cli_env, write_tiny_pretrain

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddp")
    write_tiny_pretrain(folder)
    return folder


def torchrun(workspace: Path, nproc: int, *args: str) -> tuple[list[str], dict[str, str]]:
    torchrun_bin = Path(sys.executable).parent / "torchrun"
    env = cli_env()
    return [
        str(torchrun_bin),
        "--nproc_per_node",
        str(nproc),
        "--master_port",
        str(29500 + os.getpid() % 1000),
        "-m",
        "textgen_cli",
        *args,
    ], env


def run(workspace: Path, nproc: int, *args: str) -> dict:
    command, env = torchrun(workspace, nproc, "pretrain", "-r", "tiny.yaml", "--json", *args)
    done = subprocess.run(command, cwd=workspace, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def losses(run_dir: Path) -> list[tuple[int, str, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], "loss" if "loss" in r else "val_loss", r.get("loss", r.get("val_loss"))) for r in rows]


@pytest.fixture(scope="module")
def two_process_run(workspace):
    # per-process batch 4 x 2 processes: the same global batch as one process with batch 8
    return run(workspace, 2, "run.name=ddp", "train.batch_size=4")


def test_two_processes_match_one_process_with_the_same_global_batch(workspace, two_process_run):
    single = run(workspace, 1, "run.name=single")
    assert two_process_run["processes"] == 2 and two_process_run["global_batch"] == 8 == single["global_batch"]
    assert two_process_run["tokens"] == single["tokens"]
    a, b = losses(workspace / "runs/single/pretrain"), losses(workspace / "runs/ddp/pretrain")
    assert [(s, k) for s, k, _ in a] == [(s, k) for s, k, _ in b]
    # the same examples per step; only the order of floating-point sums differs
    worst = max(abs(x - y) for (_, _, x), (_, _, y) in zip(a, b))
    assert worst < 1e-4, worst
    assert b[-1][2] < b[0][2]


def test_every_rank_ends_with_the_same_weights(two_process_run):
    hashes = two_process_run["rank_weight_hashes"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]


def interrupt(workspace: Path, nproc: int, name: str, *args: str) -> None:
    """Start a run and SIGTERM it once step 15 is logged: it must save a checkpoint and stop."""
    command, env = torchrun(workspace, nproc, "pretrain", "-r", "tiny.yaml", f"run.name={name}", *args)
    process = subprocess.Popen(
        command,
        cwd=workspace,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    metrics = workspace / f"runs/{name}/pretrain.partial/metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and not (metrics.exists() and '"step": 15' in metrics.read_text()):
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)  # torchrun forwards it to every worker
    _, err = process.communicate(timeout=120)
    assert "interrupted at step" in err, err[-2000:]
    assert (workspace / f"runs/{name}/pretrain.partial/checkpoints/latest").is_file()


def final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "final/model.safetensors"))


def test_two_process_run_interrupted_and_resumed_equals_the_uninterrupted_one(workspace, two_process_run):
    interrupt(workspace, 2, "ddp-resumed", "train.batch_size=4")
    resumed = run(workspace, 2, "run.name=ddp-resumed", "train.batch_size=4", "--resume")
    assert resumed["resumed"] is True
    assert losses(workspace / "runs/ddp-resumed/pretrain") == losses(workspace / "runs/ddp/pretrain")
    first = (workspace / "runs/ddp/pretrain/final/model.safetensors").read_bytes()
    second = (workspace / "runs/ddp-resumed/pretrain/final/model.safetensors").read_bytes()
    assert first == second


# ------------------------------------------------------------------------------------ FSDP


@pytest.fixture(scope="module")
def fsdp_run(workspace):
    return run(workspace, 2, "run.name=fsdp", "train.batch_size=4", "distributed.strategy=fsdp")


def test_fsdp_trains_like_ddp(workspace, two_process_run, fsdp_run):
    import torch

    assert fsdp_run["strategy"] == "fsdp" and two_process_run["strategy"] == "ddp"
    assert fsdp_run["global_batch"] == 8 and fsdp_run["tokens"] == two_process_run["tokens"]
    a, b = losses(workspace / "runs/ddp/pretrain"), losses(workspace / "runs/fsdp/pretrain")
    assert [(s, k) for s, k, _ in a] == [(s, k) for s, k, _ in b]
    worst = max(abs(x - y) for (_, _, x), (_, _, y) in zip(a, b))
    assert worst < 1e-5, worst
    # final/ is a plain transformers model gathered from the shards, tied weights included
    ddp, fsdp = final_weights(workspace / "runs/ddp/pretrain"), final_weights(workspace / "runs/fsdp/pretrain")
    assert ddp.keys() == fsdp.keys()
    assert all(torch.allclose(ddp[k], fsdp[k], atol=1e-5) for k in ddp)
    assert len(fsdp_run["rank_weight_hashes"]) == 1


def test_fsdp_run_resumes_with_another_number_of_processes(workspace, two_process_run):
    """An FSDP checkpoint holds full states: it resumes in one process (batch 8 = 2 x 4), without
    FSDP, and continues the uninterrupted 2-process run's loss curve."""
    import torch

    interrupt(workspace, 2, "moved", "train.batch_size=4", "distributed.strategy=fsdp")
    command = [*run_cli_args("moved", "--resume")]
    # one process with the old per-process batch would cut the data differently: refused, checkpoint kept
    refused = subprocess.run(command, cwd=workspace, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "2 process(es) x train.batch_size=4 = 8 sequences per micro-batch" in refused.stderr
    assert "resume with train.batch_size=8" in refused.stderr and "Traceback" not in refused.stderr
    assert (workspace / "runs/moved/pretrain.partial/checkpoints/latest").is_file()
    resumed = run(workspace, 1, "run.name=moved", "train.batch_size=8", "--resume")
    assert resumed["resumed"] is True and resumed["processes"] == 1 and resumed["global_batch"] == 8
    a, b = losses(workspace / "runs/ddp/pretrain"), losses(workspace / "runs/moved/pretrain")
    assert [(s, k) for s, k, _ in a] == [(s, k) for s, k, _ in b]
    worst = max(abs(x - y) for (_, _, x), (_, _, y) in zip(a, b))
    assert worst < 1e-4, worst
    ddp, moved = final_weights(workspace / "runs/ddp/pretrain"), final_weights(workspace / "runs/moved/pretrain")
    assert all(torch.allclose(ddp[k], moved[k], atol=1e-4) for k in ddp)


def run_cli_args(name: str, *args: str) -> list[str]:
    """One plain process (no torchrun), with the old per-process batch size."""
    return [
        sys.executable,
        "-m",
        "textgen_cli",
        "pretrain",
        "-r",
        "tiny.yaml",
        f"run.name={name}",
        "train.batch_size=4",
        *args,
    ]


def test_adversarial_training_with_fsdp_is_refused_before_anything_runs():
    from textgen_cli.training.distribution import check_strategy

    check_strategy("ddp", 2, adversarial=True, stage="adv-train", method="fgm")
    check_strategy("fsdp", 1, adversarial=True, stage="adv-train", method="fgm")  # one process: nothing is sharded
    check_strategy("fsdp", 2, adversarial=False, stage="adv-train", method="none")
    with pytest.raises(Exception, match="use distributed.strategy=ddp for adv-train"):
        check_strategy("fsdp", 2, adversarial=True, stage="adv-train", method="pgd")


def test_fsdp_with_compiled_blocks_logs_the_same_losses(workspace, fsdp_run):
    """train.compile under FSDP: the blocks are found before sharding renames their classes."""
    command, env = torchrun(
        workspace,
        2,
        "pretrain",
        "-r",
        "tiny.yaml",
        "--json",
        "run.name=fsdp-compiled",
        "train.batch_size=4",
        "distributed.strategy=fsdp",
        "train.compile=true",
    )
    env["TORCHINDUCTOR_CACHE_DIR"] = str(workspace / "inductor")
    done = subprocess.run(command, cwd=workspace, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert any((workspace / "inductor").rglob("*.py")), "nothing was compiled"
    compiled, eager = losses(workspace / "runs/fsdp-compiled/pretrain"), losses(workspace / "runs/fsdp/pretrain")
    assert [(s, k) for s, k, _ in compiled] == [(s, k) for s, k, _ in eager]
    worst = max(abs(x - y) for (_, _, x), (_, _, y) in zip(compiled, eager))
    assert worst < 1e-4, worst
