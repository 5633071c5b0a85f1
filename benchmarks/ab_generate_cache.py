#!/usr/bin/env python3
"""A/B: transformers' static KV cache (`cache_implementation="static"`) against the default dynamic
cache, through `generate_batch` at batch 1 and batch 32, interleaved, one torch thread; checks the
outputs are identical and prints CPU-time and wall-clock seconds (the fastest of N rounds).

    python benchmarks/ab_generate_cache.py chatgpt 32 3      # family, new tokens, rounds
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402
from bench_generate import tokenizer_for, verses  # noqa: E402

import textgen_cli.generation.decoding as D  # noqa: E402
from textgen_cli.core.schema import GenerateSection  # noqa: E402
from textgen_cli.generation.prompts import prompt_format  # noqa: E402
from textgen_cli.models import role_for  # noqa: E402
from textgen_cli.recipe import load_recipe  # noqa: E402


def main() -> None:
    family, new_tokens, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    recipe = load_recipe(str(REPO / f"recipes/{family}.yaml")).recipe
    tokenizer = tokenizer_for(recipe.tokenizer.vocab_size)
    torch.manual_seed(0)
    model = role_for(family).build(recipe.model, tokenizer).eval()
    settings = GenerateSection(max_new_tokens=new_tokens, min_new_tokens=new_tokens, batch_size=32)
    texts = verses(32)
    fmt = prompt_format(family, recipe.data.finetune.task)
    system = recipe.prompt.system if family == "chatgpt" else ""
    dynamic = D.generation_config

    def static(*args):
        config = dynamic(*args)
        config.cache_implementation = "static"
        return config

    variants = {"dynamic": dynamic, "static": static}

    def run(batch: int, variant: str):
        D.generation_config = variants[variant]  # _decode_batch looks it up in decoding.py at each call
        return D.generate_batch(model, tokenizer, texts, settings, family, batch_size=batch, system=system, fmt=fmt)

    outputs = {(v, b): [r.output_ids for r in run(b, v)] for v in variants for b in (1, 32)}
    print("outputs identical:", all(o == outputs[("dynamic", 1)] for o in outputs.values()))
    times: dict[tuple[str, int], list[tuple[float, float]]] = {key: [] for key in outputs}
    for _ in range(rounds):
        for key in times:
            cpu, wall = time.process_time(), time.perf_counter()
            run(key[1], key[0])
            times[key].append((time.process_time() - cpu, time.perf_counter() - wall))
    for v in variants:
        c1, c32 = (min(t[0] for t in times[(v, b)]) for b in (1, 32))
        w1, w32 = (min(t[1] for t in times[(v, b)]) for b in (1, 32))
        print(
            f"{family} {new_tokens} new tokens, {v} cache: CPU s batch 1 {c1:.3f}, batch 32 {c32:.3f} (x{c1 / c32:.2f}); "
            f"wall s batch 1 {w1:.3f}, batch 32 {w32:.3f} (x{w1 / w32:.2f})"
        )
    print("load average", Path("/proc/loadavg").read_text().split()[:3])


if __name__ == "__main__":
    main()
