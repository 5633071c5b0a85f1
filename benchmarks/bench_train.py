#!/usr/bin/env python3
"""Training throughput and model FLOPs utilisation, textgen's loop against a plain PyTorch loop.

For both families at the default size (recipes/*.yaml) and a larger one, on random token data:

- the machine's own dense fp32 matmul peak, measured in the same run (median of several);
- textgen: `train_stage` (the loop every stage uses: sampler, collate, token-summed loss, AdamW,
  warmup + cosine schedule, clipping, logging), tokens/s over the timed steps;
- baseline: the same transformers model, torch AdamW with the same settings, the same batches
  already collated, `model(**batch, labels=...)` with its own loss, clipping, step: no textgen code;
- MFU = FLOPs per token (textgen_cli/flops.py) x tokens/s / measured peak.

The ratio textgen / baseline is measured in the same process, interleaved, median of `--repeats`.

    python benchmarks/bench_train.py              # `make bench`; a few minutes on 2 CPU cores
    python benchmarks/bench_train.py --steps 30 --repeats 5 --sizes default
    python benchmarks/bench_train.py --compile     # train.compile=true vs eager (steady state)

Writes benchmarks/results/train.json and prints a table.
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

from textgen_cli.flops import flops_model, pretrain_tokens_per_sequence  # noqa: E402
from textgen_cli.progress import quiet_libraries  # noqa: E402
from textgen_cli.models import FAMILIES  # noqa: E402
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
        return InfillingBlocks(blocks, r.pretrain.mask_ratio, r.pretrain.poisson_lambda, 0, bos_id=1, eos_id=2, pad_id=0, mask_id=4)
    return CausalBlocks(rng.integers(10, r.tokenizer.vocab_size, size=(n_blocks, r.model.context)))


def textgen_tokens_per_s(loaded, data, steps: int) -> float:
    """The real loop, on the real code path, with evaluation and checkpoints out of the way."""
    from textgen_cli.train import train_stage

    torch.manual_seed(0)
    model = FAMILIES[loaded.recipe.model.family].build(loaded.recipe.model, Vocab(loaded.recipe.tokenizer.vocab_size))
    with tempfile.TemporaryDirectory() as root:
        run = load_recipe(str(loaded.path), [*loaded.overrides, f"run.root={root}", f"pretrain.steps={steps}", f"train.eval_every={10 * steps}",
                                             f"train.log_every={steps}", "train.eval_batches=1", "checkpoint.every=0", "eval.after_finetune=false"])
        summary = train_stage(run, "pretrain", model, _NoTokenizer(), data, data, {})
    return summary["tokens_per_s"]


def textgen_steady_tokens_per_s(loaded, data, steps: int, compile: bool, first_window: int = 5) -> tuple[float, float]:
    """(tokens/s after the first logging window, seconds of the first window beyond its steady
    time): with `train.compile` the first window holds the compilation."""
    from textgen_cli.train import train_stage

    torch.manual_seed(0)
    model = FAMILIES[loaded.recipe.model.family].build(loaded.recipe.model, Vocab(loaded.recipe.tokenizer.vocab_size))
    with tempfile.TemporaryDirectory() as root:
        run = load_recipe(str(loaded.path), [*loaded.overrides, f"run.root={root}", "run.name=bench", f"pretrain.steps={first_window + steps}",
                                             f"train.eval_every={10 * steps}", f"train.log_every={first_window}", "train.eval_batches=1",
                                             "checkpoint.every=0", f"train.compile={str(compile).lower()}"])
        train_stage(run, "pretrain", model, _NoTokenizer(), data, data, {})
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
            print(f"{family:<8} {size:<8} eager {row['eager_tokens_per_s']:>9,.0f} tok/s  compiled {row['compiled_tokens_per_s']:>9,.0f} tok/s  "
                  f"x{row['speedup']:.3f}  compile {row['compile_seconds']:.1f} s  MFU {row['mfu_eager']:.1%} -> {row['mfu_compiled']:.1%}", flush=True)
    output = Path(args.output).with_name("train-compile.json") if args.output.endswith("train.json") else Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"peak_flops": peak, "threads": torch.get_num_threads(), "steps": args.steps, "repeats": args.repeats, "rows": rows}, indent=2))
    print(f"wrote {output}")


class _NoTokenizer:
    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def save_pretrained(self, path) -> None:
        pass


def baseline_tokens_per_s(loaded, data, steps: int) -> float:
    """A plain PyTorch loop over the same model and the same batches (collated in advance)."""
    r = loaded.recipe
    torch.manual_seed(0)
    model = FAMILIES[r.model.family].build(r.model, Vocab(r.tokenizer.vocab_size))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=r.train.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=r.train.weight_decay)
    batches = [data.collate(list(range(i * r.train.batch_size, (i + 1) * r.train.batch_size)), 0) for i in range(steps)]
    tokens = sum(int(b["attention_mask"].sum()) + (int((b["labels"] != -100).sum()) if "decoder_input_ids" in b else 0) for b in batches)
    start = time.perf_counter()
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r.train.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return tokens / (time.perf_counter() - start)


def flops_per_token(loaded) -> float:
    r = loaded.recipe
    model = FAMILIES[r.model.family].build(r.model, Vocab(r.tokenizer.vocab_size))
    fm = flops_model(model)
    enc, dec = pretrain_tokens_per_sequence(r.model.family, r.model.context, r.pretrain.mask_ratio, r.pretrain.poisson_lambda)
    return (fm.per_encoder_token() * enc + fm.per_decoder_token() * dec) / (enc + dec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="default,larger")
    parser.add_argument("--output", default=str(REPO / "benchmarks/results/train.json"))
    parser.add_argument("--compile", action="store_true", help="measure train.compile=true against eager instead (writes train-compile.json)")
    args = parser.parse_args()

    quiet_libraries()
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
            print(f"{family:<8} {size:<8} textgen {row['textgen_tokens_per_s']:>9,.0f} tok/s  baseline {row['baseline_tokens_per_s']:>9,.0f} tok/s  "
                  f"ratio {row['ratio']:.3f}  MFU {row['mfu']:.1%}", flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"peak_flops": peak, "threads": torch.get_num_threads(), "steps": args.steps, "repeats": args.repeats, "rows": rows}, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
