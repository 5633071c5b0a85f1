#!/usr/bin/env python3
"""The CUDA path in one command (under 5 minutes on one H200), written to one JSON file:

1. `pytest -m cuda` (tests/test_cuda.py);
2. the dense bf16 matmul peak of the device, measured (8192 x 8192, median of 5 trials);
3. bf16 training of a ~100M-parameter `chatgpt` (12 layers, hidden 768) and `sora` (6+6 layers,
   hidden 768) through `textgen pretrain`: steady tokens/s (after the first logging window) and
   MFU = FLOPs per token (textgen_cli/models/flops.py, as the run's summary counts them) x tokens/s / peak;
4. an FSDP smoke run on the one GPU: one process, a process group of one (NCCL), each block and the
   root sharded with `fully_shard` as `distributed.strategy: fsdp` does, bf16 autocast, the fused AdamW
   the loop builds, the full state gathered back; the loss must fall (two processes cannot share one
   GPU under NCCL, so this is the most of FSDP one GPU can run);
5. batched generation tokens/s (benchmarks/bench_generate.py, both families, batch 1 and 32).

    bash scripts/gpu_check.sh                          # on the GPU machine
    bash scripts/gpu_check.sh --dry-run                # on CPU, tiny sizes: checks the script itself

`--dry-run` runs every step on the CPU with tiny models and few steps (fp32, gloo), so that the script
can be checked where there is no GPU; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# ~100M parameters each at vocabulary 4096 (the recipes' tokenizer)
FULL = {
    "chatgpt": ["model.layers=12", "model.hidden=768", "model.heads=12", "model.ffn=3072", "model.context=256"],
    "sora": ["model.layers=6", "model.hidden=768", "model.heads=12", "model.ffn=3072", "model.context=256"],
}
TINY = {
    family: ["model.layers=1", "model.hidden=32", "model.heads=2", "model.ffn=64", "model.context=64"]
    for family in FULL
}


def step(name: str) -> None:
    print(f"== {name}", file=sys.stderr, flush=True)


def run_cuda_tests(python: str) -> dict:
    started = time.perf_counter()
    done = subprocess.run(
        [python, "-m", "pytest", "-q", "-m", "cuda", "tests/test_cuda.py"], cwd=REPO, capture_output=True, text=True
    )
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr.strip()[-500:]
    return {"returncode": done.returncode, "summary": tail, "seconds": round(time.perf_counter() - started, 1)}


def matmul_peak(device: str, dry_run: bool) -> dict:
    import torch

    n, dtype = (512, torch.float32) if dry_run else (8192, torch.bfloat16)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    rates = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(20):
            a @ b
        sync()
        rates.append(2 * n**3 * 20 / (time.perf_counter() - start))
    return {"flops": statistics.median(rates), "dtype": str(dtype).replace("torch.", ""), "n": n}


def train_mfu(textgen: str, family: str, work: Path, device: str, dry_run: bool, peak: float) -> dict:
    """`textgen pretrain` at ~100M parameters in bf16; steady tokens/s from its metrics.jsonl."""
    steps, log_every = (10, 5) if dry_run else (200, 50)
    size = TINY[family] if dry_run else FULL[family]
    precision = "fp32" if dry_run else "bf16"
    args = [
        textgen,
        "pretrain",
        "--recipe",
        f"{family}.yaml",
        "--json",
        f"run.root={work / 'runs'}",
        f"run.name={family}",
        f"train.device={device}",
        f"train.precision={precision}",
        *size,
        f"train.batch_size={4 if dry_run else 32}",
        f"pretrain.steps={steps}",
        f"train.eval_every={steps}",
        f"train.log_every={log_every}",
        "train.eval_batches=2",
        "checkpoint.every=0",
        "model.dropout=0",
    ]
    started = time.perf_counter()
    done = subprocess.run(args, cwd=work, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        return {"returncode": done.returncode, "stderr": done.stderr[-2000:]}
    summary = json.loads(done.stdout)
    rows = [
        json.loads(line) for line in (work / "runs" / family / "pretrain" / "metrics.jsonl").read_text().splitlines()
    ]
    windows = [r for r in rows if "tokens_per_s" in r]
    steady = windows[1:] or windows  # the first window holds CUDA's warm-up (allocator, kernels' autotuning)
    tokens = sum(b["tokens"] - a["tokens"] for a, b in zip(windows, windows[1:])) or windows[0]["tokens"]
    seconds = (
        sum((b["tokens"] - a["tokens"]) / b["tokens_per_s"] for a, b in zip(windows, windows[1:]))
        or windows[0]["tokens"] / windows[0]["tokens_per_s"]
    )
    tokens_per_s = tokens / seconds
    flops_per_token = summary["flops"] / summary["tokens"]
    return {
        "returncode": 0,
        "parameters": summary["parameters"],
        "precision": precision,
        "steps": steps,
        "batch_size": summary["batch_size"],
        "tokens_per_s_steady": tokens_per_s,
        "tokens_per_s_whole_run": summary["tokens_per_s"],
        "flops_per_token": flops_per_token,
        "mfu": flops_per_token * tokens_per_s / peak,
        "steady_windows": len(steady),
        "peak_memory_mb": summary.get("peak_memory_mb"),
        "final_train_loss": summary["final_train_loss"],
        "wall_s": round(time.perf_counter() - started, 1),
    }


def fsdp_smoke(device: str, dry_run: bool) -> dict:
    """FSDP2 on one device in a process group of one: shard, train a few steps, gather."""
    import torch
    import torch.distributed as dist

    from textgen_cli.core.schema import ModelSection
    from textgen_cli.models import role_for
    from textgen_cli.training import fsdp
    from textgen_cli.training.optim import build_optimizer

    class Vocab:
        pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

        def __len__(self) -> int:
            return 4096

    started = time.perf_counter()
    backend = "nccl" if device == "cuda" else "gloo"
    with tempfile.TemporaryDirectory() as folder:
        dist.init_process_group(backend, init_method=f"file://{folder}/rendezvous", rank=0, world_size=1)
        try:
            torch.manual_seed(0)
            section = ModelSection(
                family="chatgpt",
                layers=2,
                hidden=64 if dry_run else 256,
                heads=4,
                ffn=128 if dry_run else 1024,
                context=64,
                dropout=0.0,
            )
            model = role_for("chatgpt").build(section, Vocab()).to(device)
            fsdp.shard(model)
            optimizer = build_optimizer(model, weight_decay=0.01, lr=3e-3, device_type=device)
            ids = torch.randint(10, 4096, (8, 64), device=device)
            losses = []
            for _ in range(20):
                with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                    loss = model(input_ids=ids, labels=ids).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
            state = fsdp.full_model_state(model)
            sharded = fsdp.is_sharded(model)
        finally:
            dist.destroy_process_group()
    return {
        "ok": sharded and losses[-1] < losses[0] and all(t.device.type == "cpu" for t in state.values()),
        "sharded": sharded,
        "backend": backend,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "full_state_tensors": len(state),
        "seconds": round(time.perf_counter() - started, 1),
    }


def generation(python: str, device: str, dry_run: bool, work: Path) -> dict:
    output = work / "generate.json"
    args = [
        python,
        str(REPO / "benchmarks/bench_generate.py"),
        "--device",
        device,
        "--threads",
        "0",
        "--output",
        str(output),
    ]
    if dry_run:
        args += ["--prompts", "4", "--batch", "4", "--new-tokens", "4", "--repeats", "1"]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        return {"returncode": done.returncode, "stderr": done.stderr[-2000:]}
    rows = json.loads(output.read_text())["results"]
    return {
        "returncode": 0,
        "rows": [
            {k: r[k] for k in ("family", "way", "new_tokens", "wall_s", "tokens_per_s", "speedup_vs_one_at_a_time")}
            for r in rows
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="CPU, tiny sizes: check the script where there is no GPU (figures mean nothing)",
    )
    parser.add_argument("--output", default=str(REPO / "benchmarks/results/gpu-check.json"))
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--textgen", default=str(Path(sys.executable).parent / "textgen"))
    args = parser.parse_args()

    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (use --dry-run to check the script on CPU)")
    started = time.perf_counter()
    result: dict = {
        "dry_run": args.dry_run,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every step: a run cut short by the time limit still leaves its figures
        result["seconds"] = round(time.perf_counter() - started, 1)
        output.write_text(json.dumps(result, indent=2) + "\n")

    step("pytest -m cuda")
    result["cuda_tests"] = run_cuda_tests(args.python)
    save()
    step("matmul peak")
    result["matmul_peak"] = matmul_peak(device, args.dry_run)
    save()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        result["training"] = {}
        for family in ("chatgpt", "sora"):
            step(f"training {family}")
            result["training"][family] = train_mfu(
                args.textgen, family, work, device, args.dry_run, result["matmul_peak"]["flops"]
            )
            save()
        step("FSDP smoke run")
        result["fsdp_smoke"] = fsdp_smoke(device, args.dry_run)
        save()
        step("generation")
        result["generation"] = generation(args.python, device, args.dry_run, work)
    failed = [
        name
        for name, ok in [
            (
                "cuda_tests",
                result["cuda_tests"]["returncode"] in (0, 5)
                if args.dry_run
                else result["cuda_tests"]["returncode"] == 0,
            ),
            *[(f"training.{f}", r["returncode"] == 0) for f, r in result["training"].items()],
            ("fsdp_smoke", result["fsdp_smoke"]["ok"]),
            ("generation", result["generation"]["returncode"] == 0),
        ]
        if not ok
    ]
    result["failed"] = failed
    save()
    print(json.dumps({k: result[k] for k in ("device", "seconds", "failed")}))
    for family, row in result["training"].items():
        if row["returncode"] == 0:
            print(
                f"{family}: {row['parameters'] / 1e6:.1f} M parameters, {row['tokens_per_s_steady']:,.0f} tokens/s, MFU {row['mfu']:.1%}"
            )
    print(f"wrote {args.output}")
    if failed:
        raise SystemExit(f"gpu_check: failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
