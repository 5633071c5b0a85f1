#!/usr/bin/env python3
"""Generation throughput: `generate_batch` at batch 1 and batch 32 against `model.generate` called
one prompt at a time, for the default sizes of both families (recipes/sora-bart.yaml, recipes/chatgpt-llama.yaml:
the layouts docs/performance.md's figures were measured with).

Weights are random (throughput does not depend on what the model learned); every prompt gets exactly
`--new-tokens` new tokens (min_new_tokens = max_new_tokens), so all three ways do the same work.
Prompts are the first KJV verses of the bible-modern test split, encoded as each family is prompted
after finetuning (chat template with the recipe's system prompt for chatgpt, [bos] source [eos] for sora).

    python benchmarks/bench_generate.py            # `make bench`; about a minute on 2 CPU cores
    python benchmarks/bench_generate.py --threads 0 --device cuda --prompts 64

Prints a table (wall-clock and CPU-time figures; see `Clock`) and writes benchmarks/results/generate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from textgen_cli.core.schema import GenerateSection  # noqa: E402
from textgen_cli.generation.decoding import generate_batch, generation_config  # noqa: E402
from textgen_cli.generation.prompts import build_prompt, prompt_budget, prompt_format  # noqa: E402
from textgen_cli.recipe import load_recipe  # noqa: E402


def tokenizer_for(vocab_size: int):
    from textgen_cli.data.tokenizer import train_tokenizer

    lines = [
        line.strip()
        for line in (REPO / "recipes/data/moby-dick/train.txt").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    return train_tokenizer(lines, vocab_size, 2)


def verses(n: int) -> list[str]:
    rows = (REPO / "recipes/data/bible-modern/test.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(row)["source"] for row in rows[:n]]


class Clock:
    """Wall-clock and CPU seconds of this process: on a busy shared machine the CPU time of a
    one-thread run is what an idle machine's wall-clock time would be."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def one_at_a_time(model, tokenizer, prompt_ids: list[list[int]], settings: GenerateSection) -> tuple[int, float, float]:
    """The baseline: plain `model.generate`, one prompt per call, same decoding configuration."""
    import torch

    config = generation_config(model, tokenizer, settings)
    device = next(model.parameters()).device
    saved, model.generation_config = model.generation_config, config
    tokens = 0
    with Clock() as clock, torch.inference_mode():
        for ids in prompt_ids:
            x = torch.tensor([ids], device=device)
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=config)
            tokens += out.shape[1] - (1 if model.config.is_encoder_decoder else x.shape[1])
        if device.type == "cuda":
            torch.cuda.synchronize()
    model.generation_config = saved
    return tokens, clock.wall, clock.cpu


def through_generate_batch(
    model, tokenizer, prompts, settings, family, fmt, system, batch_size
) -> tuple[int, float, float]:
    import torch

    with Clock() as clock:
        results = generate_batch(
            model, tokenizer, prompts, settings, family, batch_size=batch_size, system=system, fmt=fmt
        )
        if next(model.parameters()).device.type == "cuda":
            torch.cuda.synchronize()
    return sum(r.new_tokens for r in results), clock.wall, clock.cpu


def best_of(repeats: int, run) -> tuple[int, float, float]:
    """The fastest of `repeats` runs after one warm-up run (the least disturbed by other processes):
    (tokens, best wall-clock seconds, best CPU seconds)."""
    run()
    results = [run() for _ in range(repeats)]
    return results[0][0], min(r[1] for r in results), min(r[2] for r in results)


BENCHED_RECIPES = {"sora": "sora-bart.yaml", "chatgpt": "chatgpt-llama.yaml"}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=32, help="prompts per measurement (default 32)")
    parser.add_argument("--new-tokens", type=int, default=32, help="new tokens per prompt (default 32)")
    parser.add_argument("--batch", type=int, default=32, help="the large batch size (default 32)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per measurement; the fastest counts (default 3)"
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: stable figures on a small shared machine; 0: torch's default)",
    )
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "generate.json"))
    args = parser.parse_args()

    from textgen_cli.models import role_for

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    settings = GenerateSection(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, batch_size=args.batch)
    texts = verses(args.prompts)
    rows = []
    tokenizers: dict[int, object] = {}
    for family in ("sora", "chatgpt"):
        recipe = load_recipe(str(REPO / "recipes" / BENCHED_RECIPES[family])).recipe
        vocab = recipe.tokenizer.vocab_size
        tokenizer = tokenizers.setdefault(vocab, tokenizer_for(vocab))
        model = role_for(family).build(recipe.model, tokenizer).to(args.device).eval()
        fmt = prompt_format(family, recipe.data.finetune.task)
        system = recipe.prompt.system if family == "chatgpt" else ""
        budget = prompt_budget(model, settings)
        prompt_ids = [build_prompt(tokenizer, text, family, fmt, budget, system).ids for text in texts]
        params = sum(p.numel() for p in model.parameters())
        print(
            f"{family}: {params / 1e6:.2f} M parameters, {recipe.model.layers} layers, hidden {recipe.model.hidden}, "
            f"{len(texts)} prompts of {min(map(len, prompt_ids))}-{max(map(len, prompt_ids))} tokens, {args.new_tokens} new tokens each",
            file=sys.stderr,
        )
        measured = {
            "model.generate, one prompt at a time": best_of(
                args.repeats, lambda: one_at_a_time(model, tokenizer, prompt_ids, settings)
            ),
            "generate_batch, batch 1": best_of(
                args.repeats, lambda: through_generate_batch(model, tokenizer, texts, settings, family, fmt, system, 1)
            ),
            f"generate_batch, batch {args.batch}": best_of(
                args.repeats,
                lambda: through_generate_batch(model, tokenizer, texts, settings, family, fmt, system, args.batch),
            ),
        }
        baseline = measured["model.generate, one prompt at a time"]
        batch_1 = measured["generate_batch, batch 1"]
        for way, (tokens, wall, cpu) in measured.items():
            rows.append(
                {
                    "family": family,
                    "way": way,
                    "parameters": params,
                    "prompts": len(texts),
                    "new_tokens": tokens,
                    "wall_s": round(wall, 4),
                    "cpu_s": round(cpu, 4),
                    "tokens_per_s": round(tokens / wall, 1),
                    "tokens_per_cpu_s": round(tokens / cpu, 1),
                    "speedup_vs_one_at_a_time": round(baseline[1] / wall, 2),
                    "speedup_vs_one_at_a_time_cpu": round(baseline[2] / cpu, 2),
                    # the issue-17 target: generate_batch at the large batch against generate_batch at batch 1
                    "speedup_vs_batch_1": round(batch_1[1] / wall, 2),
                }
            )

    width = max(len(r["way"]) for r in rows)
    print(
        f"\n{'family':<8} {'way':<{width}} {'tokens':>7} {'wall s':>7} {'tokens/s':>9} {'speed-up':>8} {'CPU s':>7} {'tokens/CPU s':>12} {'speed-up':>8} {'vs batch 1':>10}"
    )
    for r in rows:
        print(
            f"{r['family']:<8} {r['way']:<{width}} {r['new_tokens']:>7} {r['wall_s']:>7.2f} {r['tokens_per_s']:>9,.0f} {r['speedup_vs_one_at_a_time']:>7.2f}x"
            f" {r['cpu_s']:>7.2f} {r['tokens_per_cpu_s']:>12,.0f} {r['speedup_vs_one_at_a_time_cpu']:>7.2f}x"
            f" {r['speedup_vs_batch_1']:>9.2f}x"
        )
    result = {
        "benchmark": "generate",
        "command": " ".join(["python benchmarks/bench_generate.py", *sys.argv[1:]]),
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "settings": {
            "new_tokens": args.new_tokens,
            "batch": args.batch,
            "prompts": args.prompts,
            "repeats": args.repeats,
            "decoding": "greedy",
        },
        "results": rows,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
