#!/usr/bin/env python3
"""Training throughput and model FLOPs utilisation, textgen's loop against a plain PyTorch loop.

For both families at the default size (recipes/*.yaml) and a larger one, on random token data:

- the machine's own dense fp32 matmul peak, measured in the same run (median of several);
- textgen: `train_stage` (the loop every stage uses: sampler, collate, token-summed loss, AdamW,
  warmup + cosine schedule, clipping, logging), tokens/s over the timed steps;
- baseline: the same transformers model, torch AdamW with the same settings, the same batches
  already collated, `model(**batch, labels=...)` with its own loss, clipping, step: no textgen code;
- MFU = FLOPs per token (textgen_cli/models/flops.py) x tokens/s / measured peak.

The ratio textgen / baseline is measured in the same process, interleaved, median of `--repeats`.

    python benchmarks/bench_train.py              # `make bench`; a few minutes on 2 CPU cores
    python benchmarks/bench_train.py --steps 30 --repeats 5 --sizes default
    python benchmarks/bench_train.py --compile     # train.compile=true vs eager (steady state)
    OMP_NUM_THREADS=2 python benchmarks/bench_train.py --nanogpt   # against a reference GPT (below)
    python benchmarks/bench_train.py --adamw       # AdamW: per-parameter loop vs foreach vs fused

`--nanogpt` measures at nanoGPT's own CPU settings (4 layers, 4 heads, hidden 128, block 64,
batch 12, fp32, no compile, dropout 0, vocabulary 4096) four ways (NANOGPT_WAYS), each measurement a
fresh process, alternating, wall-clock tokens/s after 20 warm-up steps: textgen's `train_stage`;
`ReferenceGPT` (below: nanoGPT's model and loop re-typed in plain PyTorch, since nanoGPT itself cannot
be downloaded here) as nanoGPT runs it (torch's default AdamW: the per-parameter loop on CPU; glibc's
default malloc); the same reference with textgen's fused AdamW; and with fused AdamW and
`keep_freed_memory` too, which leaves only model + loop to compare.

Writes benchmarks/results/train.json (train-compile.json, train-nanogpt.json, train-adamw.json for
the modes) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from textgen_cli.core.progress import quiet_libraries  # noqa: E402
from textgen_cli.models import role_for  # noqa: E402
from textgen_cli.models.flops import Lengths, flops_model, pretrain_tokens_per_sequence  # noqa: E402
from textgen_cli.objectives import CausalBlocks, InfillingBlocks  # noqa: E402
from textgen_cli.recipe import load_recipe  # noqa: E402

LARGER = ["model.layers=8", "model.hidden=256", "model.heads=8", "model.ffn=1024"]


class Vocab:
    """What the builders need of a tokenizer (token ids of the specials and the size)."""

    def __init__(self, size: int):
        self.size, self.pad_token_id, self.bos_token_id, self.eos_token_id = size, 0, 1, 2

    def __len__(self) -> int:
        return self.size


def matmul_peak(n: int = 1024, repeats: int = 30, trials: int = 5) -> float:
    """Dense fp32 FLOP/s of this machine: median over trials of 2 n^3 x repeats / seconds."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    rates = []
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        rates.append(2 * n**3 * repeats / (time.perf_counter() - start))
    return statistics.median(rates)


def dataset(loaded, n_blocks: int = 512):
    r = loaded.recipe
    rng = np.random.default_rng(0)
    if r.model.family == "sora":
        blocks = rng.integers(10, r.tokenizer.vocab_size, size=(n_blocks, r.model.context - 2))
        return InfillingBlocks(
            blocks, r.pretrain.mask_ratio, r.pretrain.poisson_lambda, 0, bos_id=1, eos_id=2, pad_id=0, mask_id=4
        )
    return CausalBlocks(rng.integers(10, r.tokenizer.vocab_size, size=(n_blocks, r.model.context)))


def textgen_tokens_per_s(loaded, data, steps: int) -> float:
    """The real loop, on the real code path, with evaluation and checkpoints out of the way."""
    from textgen_cli.training.train import train_stage

    torch.manual_seed(0)
    model = role_for(loaded.recipe.model.family).build(loaded.recipe.model, Vocab(loaded.recipe.tokenizer.vocab_size))
    with tempfile.TemporaryDirectory() as root:
        run = load_recipe(
            str(loaded.path),
            [
                *loaded.overrides,
                f"run.root={root}",
                f"pretrain.steps={steps}",
                f"train.eval_every={10 * steps}",
                f"train.log_every={steps}",
                "train.eval_batches=1",
                "checkpoint.every=0",
                "eval.after_finetune=false",
            ],
        )
        summary = train_stage(
            run, "pretrain", model=model, tokenizer=_NoTokenizer(), train_set=data, val_set=data, notes={}
        )
    return summary.tokens_per_s


def textgen_steady_tokens_per_s(loaded, data, steps: int, compile: bool, first_window: int = 5) -> tuple[float, float]:
    """(tokens/s after the first logging window, seconds of the first window beyond its steady
    time): with `train.compile` the first window holds the compilation."""
    from textgen_cli.training.train import train_stage

    torch.manual_seed(0)
    model = role_for(loaded.recipe.model.family).build(loaded.recipe.model, Vocab(loaded.recipe.tokenizer.vocab_size))
    with tempfile.TemporaryDirectory() as root:
        run = load_recipe(
            str(loaded.path),
            [
                *loaded.overrides,
                f"run.root={root}",
                "run.name=bench",
                f"pretrain.steps={first_window + steps}",
                f"train.eval_every={10 * steps}",
                f"train.log_every={first_window}",
                "train.eval_batches=1",
                "checkpoint.every=0",
                f"train.compile={str(compile).lower()}",
            ],
        )
        train_stage(run, "pretrain", model=model, tokenizer=_NoTokenizer(), train_set=data, val_set=data, notes={})
        rows = [json.loads(line) for line in (Path(root) / "bench/pretrain/metrics.jsonl").read_text().splitlines()]
    windows = [r for r in rows if "tokens_per_s" in r]
    first, rest = windows[0], windows[1:]
    tokens = [b["tokens"] - a["tokens"] for a, b in zip(windows, rest)]
    seconds = [n / r["tokens_per_s"] for n, r in zip(tokens, rest)]
    steady = sum(tokens) / sum(seconds)
    return steady, first["tokens"] / first["tokens_per_s"] - first["tokens"] / steady


def compare_compile(args, peak: float) -> None:
    """`--compile`: textgen's loop eager against `train.compile=true`, steady state, interleaved."""
    rows = []
    for size in args.sizes.split(","):
        for family in ("chatgpt", "sora"):
            loaded = load_recipe(str(REPO / f"recipes/{family}.yaml"), LARGER if size == "larger" else [])
            data = dataset(loaded)
            eager, compiled, overhead = [], [], []
            torch._dynamo.reset()  # one family's compiled blocks must not count against the next's recompile limit
            textgen_tokens_per_s(loaded, data, 3)  # warm-up
            for _ in range(args.repeats):
                eager.append(textgen_steady_tokens_per_s(loaded, data, args.steps, compile=False)[0])
                rate, extra = textgen_steady_tokens_per_s(loaded, data, args.steps, compile=True)
                compiled.append(rate)
                overhead.append(extra)
            per_token = flops_per_token(loaded)
            row = {
                "family": family,
                "size": size,
                "eager_tokens_per_s": statistics.median(eager),
                "compiled_tokens_per_s": statistics.median(compiled),
                "speedup": statistics.median(c / e for c, e in zip(compiled, eager)),
                "compile_seconds": statistics.median(overhead),
                "mfu_eager": per_token * statistics.median(eager) / peak,
                "mfu_compiled": per_token * statistics.median(compiled) / peak,
                "runs": {"eager": eager, "compiled": compiled, "compile_seconds": overhead},
            }
            rows.append(row)
            print(
                f"{family:<8} {size:<8} eager {row['eager_tokens_per_s']:>9,.0f} tok/s  compiled {row['compiled_tokens_per_s']:>9,.0f} tok/s  "
                f"x{row['speedup']:.3f}  compile {row['compile_seconds']:.1f} s  MFU {row['mfu_eager']:.1%} -> {row['mfu_compiled']:.1%}",
                flush=True,
            )
    write_result(
        args,
        "compile",
        {
            "peak_flops": peak,
            "threads": torch.get_num_threads(),
            "steps": args.steps,
            "repeats": args.repeats,
            "rows": rows,
        },
    )


class _NoTokenizer:
    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def save_pretrained(self, path) -> None:
        pass


def baseline_tokens_per_s(loaded, data, steps: int) -> float:
    """A plain PyTorch loop over the same model and the same batches (collated in advance)."""
    r = loaded.recipe
    torch.manual_seed(0)
    model = role_for(r.model.family).build(r.model, Vocab(r.tokenizer.vocab_size))
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=r.train.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=r.train.weight_decay
    )
    batches = [data.collate(list(range(i * r.train.batch_size, (i + 1) * r.train.batch_size)), 0) for i in range(steps)]
    tokens = sum(
        int(b["attention_mask"].sum()) + (int((b["labels"] != -100).sum()) if "decoder_input_ids" in b else 0)
        for b in batches
    )
    start = time.perf_counter()
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r.train.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return tokens / (time.perf_counter() - start)


class ReferenceBlock(nn.Module):
    """A pre-LayerNorm GPT-2 block: causal SDPA attention and a tanh-GELU MLP, with biases."""

    def __init__(self, hidden: int, heads: int, ffn: int):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv, self.proj = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
        self.fc, self.fc_out = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(hidden, dim=2)
        q, k, v = (t.view(batch, length, self.heads, hidden // self.heads).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, hidden))
        return x + self.fc_out(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class ReferenceGPT(nn.Module):
    """nanoGPT's model in plain PyTorch, the size of textgen's `chatgpt` (GPT-2 layout: learned
    positions, biases, a final LayerNorm, the output layer tied to the token embeddings); the loss
    is the mean cross-entropy over every position, as nanoGPT computes it."""

    def __init__(self, vocab: int, context: int, hidden: int, layers: int, heads: int, ffn: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, hidden), nn.Embedding(context, hidden)
        self.blocks = nn.ModuleList(ReferenceBlock(hidden, heads, ffn) for _ in range(layers))
        self.ln_f = nn.LayerNorm(hidden)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)
        self.lm_head.weight = self.wte.weight
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))


NANOGPT = [
    "model.arch=gpt2",  # nanoGPT is GPT-2's layout; chatgpt-llama.yaml builds the Llama layout
    "model.layers=4",
    "model.heads=4",
    "model.hidden=128",
    "model.ffn=512",
    "model.context=64",
    "model.dropout=0",
    "model.attention_dropout=0",
    "train.batch_size=12",
    "tokenizer.vocab_size=4096",
]


def reference_tokens_per_s(loaded, tokens: np.ndarray, steps: int, warmup: int, fused: bool) -> tuple[float, float]:
    """nanoGPT's training loop on `ReferenceGPT`: random windows of the token stream per step (its
    `get_batch`), AdamW over decay / no-decay groups (torch's default implementation unless `fused`,
    as nanoGPT does on CPU), clipping at 1.0, `loss.item()` every step (its CPU `log_interval=1`);
    (wall-clock, CPU-time) tokens/s over the steps after `warmup`."""
    m, batch = loaded.recipe.model, loaded.recipe.train.batch_size
    torch.manual_seed(0)
    model = ReferenceGPT(loaded.recipe.tokenizer.vocab_size, m.context, m.hidden, m.layers, m.heads, m.ffn)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99), **({"fused": True} if fused else {}))
    rng = np.random.default_rng(0)

    def get_batch() -> tuple[torch.Tensor, torch.Tensor]:
        starts = rng.integers(0, len(tokens) - m.context - 1, size=batch)
        x = torch.stack([torch.from_numpy(tokens[i : i + m.context].astype(np.int64)) for i in starts])
        y = torch.stack([torch.from_numpy(tokens[i + 1 : i + 1 + m.context].astype(np.int64)) for i in starts])
        return x, y

    x, y = get_batch()
    for step in range(warmup + steps):
        if step == warmup:
            start, cpu_start = time.perf_counter(), time.process_time()
        loss = model(x, y)
        x, y = get_batch()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return steps * batch * m.context / wall, steps * batch * m.context / cpu


def textgen_wall_tokens_per_s(loaded, data, steps: int, warmup: int) -> tuple[float, float]:
    """textgen's `train_stage`, (wall-clock, CPU-time) tokens/s between the logging of step
    `warmup` and of the last step: everything the loop does, logging included. The clocks are read
    when the loop writes a metrics row (a wrapper around `RunDir.append_metrics`, benchmark only)."""
    from textgen_cli.training.run_dir import RunDir
    from textgen_cli.training.train import train_stage

    torch.manual_seed(0)
    model = role_for(loaded.recipe.model.family).build(loaded.recipe.model, Vocab(loaded.recipe.tokenizer.vocab_size))
    marks: list[tuple[int, int, float, float]] = []  # (step, tokens, wall, cpu) at each logging window
    append = RunDir.append_metrics

    def timed_append(self, row, *args, **kwargs):
        if "tokens_per_s" in row:
            marks.append((row["step"], row["tokens"], time.perf_counter(), time.process_time()))
        return append(self, row, *args, **kwargs)

    RunDir.append_metrics = timed_append
    try:
        with tempfile.TemporaryDirectory() as root:
            run = load_recipe(
                str(loaded.path),
                [
                    *loaded.overrides,
                    f"run.root={root}",
                    "run.name=bench",
                    f"pretrain.steps={warmup + steps}",
                    f"train.eval_every={10 * (warmup + steps)}",
                    f"train.log_every={warmup}",
                    "train.eval_batches=1",
                    "checkpoint.every=0",
                ],
            )
            train_stage(run, "pretrain", model=model, tokenizer=_NoTokenizer(), train_set=data, val_set=data, notes={})
    finally:
        RunDir.append_metrics = append
    (first_step, first_tokens, first_wall, first_cpu), (last_step, last_tokens, last_wall, last_cpu) = (
        marks[0],
        marks[-1],
    )
    assert first_step == warmup and last_step == warmup + steps
    return (last_tokens - first_tokens) / (last_wall - first_wall), (last_tokens - first_tokens) / (
        last_cpu - first_cpu
    )


def write_result(args, mode: str | None, result: dict) -> None:
    """Write a benchmark's JSON: `--output` itself, or for a mode (`--compile`, `--nanogpt`, `--adamw`)
    with the default output, train-MODE.json beside it."""
    output = Path(args.output)
    if mode is not None and args.output.endswith("train.json"):
        output = output.with_name(f"train-{mode}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    print(f"wrote {output}")


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# the reference GPT, four ways; each measurement runs in a fresh process (see compare_nanogpt)
NANOGPT_WAYS = {
    "textgen": "textgen's train_stage (fused AdamW and keep_freed_memory: its own)",
    "reference": "nanoGPT's model and loop as nanoGPT runs them: per-parameter AdamW, glibc's default malloc",
    "reference_fused_adamw": "the reference with textgen's fused AdamW",
    "reference_fused_adamw_kept_memory": "the reference with textgen's fused AdamW and keep_freed_memory",
}


def measure_nanogpt_way(way: str, steps: int, warmup: int) -> tuple[float, float]:
    """One way of NANOGPT_WAYS in this process: (wall-clock, CPU-time) tokens/s after `warmup` steps."""
    from textgen_cli.training.memory import keep_freed_memory

    loaded = load_recipe(str(REPO / "recipes/chatgpt-llama.yaml"), NANOGPT)
    if way == "textgen":
        return textgen_wall_tokens_per_s(loaded, dataset(loaded, n_blocks=2048), steps, warmup)
    if way.endswith("kept_memory"):
        keep_freed_memory()
    tokens = np.random.default_rng(1).integers(10, loaded.recipe.tokenizer.vocab_size, size=1_000_000).astype(np.uint16)
    return reference_tokens_per_s(loaded, tokens, steps, warmup, fused="fused" in way)


def compare_nanogpt(args) -> None:
    """`--nanogpt`: textgen against the reference GPT at nanoGPT's CPU settings. Every measurement is a
    fresh process (`--nanogpt-way`), as nanoGPT's train.py and `textgen pretrain` would be: a process-wide
    setting of one (textgen's malloc settings) cannot leak into the other, and none inherits the other's
    heap. The ways alternate, their order reversed every other repeat."""
    import subprocess

    loaded = load_recipe(str(REPO / "recipes/chatgpt-llama.yaml"), NANOGPT)
    runs: dict[str, list[float]] = {name: [] for name in NANOGPT_WAYS}
    cpu_runs: dict[str, list[float]] = {name: [] for name in NANOGPT_WAYS}
    loads: list[float] = []
    for repeat in range(args.repeats):
        order = list(NANOGPT_WAYS) if repeat % 2 == 0 else list(reversed(NANOGPT_WAYS))
        for name in order:
            loads.append(load_average())
            command = [
                sys.executable,
                __file__,
                "--nanogpt-way",
                name,
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
            ]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            wall, cpu = json.loads(out.strip().splitlines()[-1])
            runs[name].append(wall)
            cpu_runs[name].append(cpu)
        print(
            f"repeat {repeat + 1}: "
            + "  ".join(f"{n} {runs[n][-1]:,.0f} ({cpu_runs[n][-1]:,.0f} per CPU s)" for n in NANOGPT_WAYS)
            + f"  (load average {loads[-1]:.2f})",
            flush=True,
        )

    def ratio(numerator: str, denominator: str, table: dict[str, list[float]]) -> float:
        # the median over repeats of each repeat's ratio (the two ran one after the other)
        return statistics.median(a / b for a, b in zip(table[numerator], table[denominator]))

    ref_params = sum(p.numel() for p in ReferenceGPT(4096, 64, 128, 4, 4, 512).parameters())
    ours_params = sum(p.numel() for p in role_for("chatgpt").build(loaded.recipe.model, Vocab(4096)).parameters())
    others = [name for name in NANOGPT_WAYS if name != "textgen"]
    result = {
        "command": " ".join(["python benchmarks/bench_train.py", *sys.argv[1:]]),
        "threads": int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())),
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "ways": NANOGPT_WAYS,
        "parameters": {"textgen": ours_params, "reference": ref_params},
        "median_tokens_per_s": {name: statistics.median(values) for name, values in runs.items()},
        "median_tokens_per_cpu_s": {name: statistics.median(values) for name, values in cpu_runs.items()},
        "ratio_textgen_to": {name: ratio("textgen", name, runs) for name in others},
        "cpu_ratio_textgen_to": {name: ratio("textgen", name, cpu_runs) for name in others},
        "load_average_1min": {"min": min(loads), "median": statistics.median(loads), "max": max(loads)},
        "runs": runs,
        "cpu_runs": cpu_runs,
    }
    for name in NANOGPT_WAYS:
        versus = (
            ""
            if name == "textgen"
            else f"   textgen / this: {result['ratio_textgen_to'][name]:.3f} (CPU {result['cpu_ratio_textgen_to'][name]:.3f})"
        )
        print(
            f"{name:<34} {result['median_tokens_per_s'][name]:>9,.0f} tokens/s  {result['median_tokens_per_cpu_s'][name]:>9,.0f} per CPU s{versus}"
        )
    print(f"load average {result['load_average_1min']}")
    write_result(args, "nanogpt", result)


def compare_adamw(args) -> None:
    """`--adamw`: one training step of the default `chatgpt` at nanoGPT's settings in a plain loop,
    with each AdamW implementation, interleaved: ms per whole step and per `optimizer.step()`."""
    loaded = load_recipe(str(REPO / "recipes/chatgpt-llama.yaml"), NANOGPT)
    r = loaded.recipe
    data = dataset(loaded)
    batches = [
        data.collate(list(range(i * r.train.batch_size, (i + 1) * r.train.batch_size)), 0) for i in range(args.steps)
    ]
    kinds = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    models, optimizers = {}, {}
    for name, kind in kinds.items():
        torch.manual_seed(0)
        models[name] = role_for("chatgpt").build(r.model, Vocab(r.tokenizer.vocab_size)).train()
        optimizers[name] = torch.optim.AdamW(
            models[name].parameters(), lr=r.train.lr, betas=(0.9, 0.95), weight_decay=r.train.weight_decay, **kind
        )
    step_ms: dict[str, list[float]] = {name: [] for name in kinds}
    optimizer_ms: dict[str, list[float]] = {name: [] for name in kinds}
    loads = []
    for repeat in range(args.repeats + 1):  # the first round warms up and is not kept
        for name in kinds:
            model, optimizer = models[name], optimizers[name]
            loads.append(load_average())
            in_optimizer = 0.0
            start = time.perf_counter()
            for batch in batches:
                model(**batch).loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), r.train.clip_grad)
                before = time.perf_counter()
                optimizer.step()
                in_optimizer += time.perf_counter() - before
                optimizer.zero_grad(set_to_none=True)
            if repeat:
                step_ms[name].append(1e3 * (time.perf_counter() - start) / len(batches))
                optimizer_ms[name].append(1e3 * in_optimizer / len(batches))
    result = {
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "repeats": args.repeats,
        "median_step_ms": {n: statistics.median(v) for n, v in step_ms.items()},
        "median_optimizer_step_ms": {n: statistics.median(v) for n, v in optimizer_ms.items()},
        "load_average_1min": {"min": min(loads), "median": statistics.median(loads), "max": max(loads)},
        "runs": {"step_ms": step_ms, "optimizer_step_ms": optimizer_ms},
    }
    for name in kinds:
        print(
            f"AdamW {name:<8} step {result['median_step_ms'][name]:7.2f} ms   optimizer.step {result['median_optimizer_step_ms'][name]:6.2f} ms"
        )
    print(f"load average {result['load_average_1min']}")
    write_result(args, "adamw", result)


def flops_per_token(loaded) -> float:
    r = loaded.recipe
    model = role_for(r.model.family).build(r.model, Vocab(r.tokenizer.vocab_size))
    fm = flops_model(model)
    enc, dec = pretrain_tokens_per_sequence(
        r.model.family, r.model.context, r.pretrain.mask_ratio, r.pretrain.poisson_lambda
    )
    return fm.flops(Lengths.of_sequence(enc, dec)) / (enc + dec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="default,larger")
    parser.add_argument("--output", default=str(REPO / "benchmarks/results/train.json"))
    parser.add_argument(
        "--compile",
        action="store_true",
        help="measure train.compile=true against eager instead (writes train-compile.json)",
    )
    parser.add_argument(
        "--nanogpt",
        action="store_true",
        help="textgen against the reference GPT at nanoGPT's CPU settings (writes train-nanogpt.json)",
    )
    parser.add_argument(
        "--adamw", action="store_true", help="AdamW per-parameter loop vs foreach vs fused (writes train-adamw.json)"
    )
    parser.add_argument("--warmup", type=int, default=20, help="--nanogpt: steps before the clock starts")
    parser.add_argument("--nanogpt-way", choices=sorted(NANOGPT_WAYS), help=argparse.SUPPRESS)  # one measurement
    args = parser.parse_args()
    if args.nanogpt_way:
        quiet_libraries()
        print(json.dumps(measure_nanogpt_way(args.nanogpt_way, args.steps, args.warmup)))
        return

    quiet_libraries()
    if args.nanogpt:
        compare_nanogpt(args)
        return
    if args.adamw:
        compare_adamw(args)
        return
    peak = matmul_peak()
    print(f"measured fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads)")
    if args.compile:
        compare_compile(args, peak)
        return
    rows = []
    for size in args.sizes.split(","):
        for family in ("chatgpt", "sora"):
            loaded = load_recipe(str(REPO / f"recipes/{family}.yaml"), LARGER if size == "larger" else [])
            data = dataset(loaded)
            ours, theirs = [], []
            textgen_tokens_per_s(loaded, data, 3)  # warm-up: first-call allocations, thread pools
            for _ in range(args.repeats):  # interleaved, so drifts in machine load hit both
                ours.append(textgen_tokens_per_s(loaded, data, args.steps))
                theirs.append(baseline_tokens_per_s(loaded, data, args.steps))
            per_token = flops_per_token(loaded)
            row = {
                "family": family,
                "size": size,
                "textgen_tokens_per_s": statistics.median(ours),
                "baseline_tokens_per_s": statistics.median(theirs),
                "ratio": statistics.median(a / b for a, b in zip(ours, theirs)),
                "flops_per_token": per_token,
                "mfu": per_token * statistics.median(ours) / peak,
                "runs": {"textgen": ours, "baseline": theirs},
            }
            rows.append(row)
            print(
                f"{family:<8} {size:<8} textgen {row['textgen_tokens_per_s']:>9,.0f} tok/s  baseline {row['baseline_tokens_per_s']:>9,.0f} tok/s  "
                f"ratio {row['ratio']:.3f}  MFU {row['mfu']:.1%}",
                flush=True,
            )
    write_result(
        args,
        None,
        {
            "peak_flops": peak,
            "threads": torch.get_num_threads(),
            "steps": args.steps,
            "repeats": args.repeats,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
