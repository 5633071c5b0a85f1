#!/usr/bin/env python3
"""Data preparation: tokenize and pack a large text file (default 100 MB, Moby-Dick repeated), first
cold and then from the cache, each in a fresh process so that the peak resident memory (RSS) and the
CPU use of that step alone are measured. The CPU time counts the tokenizer worker processes that a
large file gets (textgen_cli.packing), and their memory is sampled too: the peak of the main process's
and the workers' proportional set sizes (PSS: pages shared between them counted once, which a
forked worker's RSS would count again).

    python benchmarks/bench_data.py               # part of `make bench`
    python benchmarks/bench_data.py --megabytes 20

Writes benchmarks/results/data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import glob, json, os, resource, sys, threading, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from textgen_cli.packing import split_sources, packed_blocks
from textgen_cli.tokenizer import load_tokenizer

def kb(path, key):  # a "Key:  123 kB" line of a /proc file; 0 once the process is gone
    try:
        with open(path) as handle:
            return next((int(line.split()[1]) for line in handle if line.startswith(key + ":")), 0)
    except OSError:
        return 0

peak = {"pss_kb": 0, "workers": set()}
done = threading.Event()

def sample():  # Linux: the summed PSS of this process and its children, every 0.5 s
    while True:
        kids = set()
        for path in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
            try:
                kids.update(open(path).read().split())
            except OSError:
                pass
        peak["workers"] |= kids
        pss = kb("/proc/self/smaps_rollup", "Pss") + sum(kb(f"/proc/{kid}/smaps_rollup", "Pss") for kid in kids)
        peak["pss_kb"] = max(peak["pss_kb"], pss)
        if done.wait(0.5):
            return

tokenizer = load_tokenizer(Path(sys.argv[3]))
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
usage = lambda who: (lambda r: r.ru_utime + r.ru_stime)(resource.getrusage(who))
before, before_children = usage(resource.RUSAGE_SELF), usage(resource.RUSAGE_CHILDREN)
start = time.perf_counter()
train, _, _ = split_sources(sys.argv[2], "text", None, sys.argv[2], 0.05)
packed = packed_blocks(train, tokenizer, 256)
wall = time.perf_counter() - start
cpu, worker_cpu = usage(resource.RUSAGE_SELF) - before, usage(resource.RUSAGE_CHILDREN) - before_children
done.set()
sampler.join()
print(json.dumps({"seconds": wall, "cpu_seconds": cpu, "worker_cpu_seconds": worker_cpu, "workers": len(peak["workers"]),
                  "tokens": packed.tokens, "blocks": len(packed.blocks), "cached": packed.cached,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_pss_total_mb": peak["pss_kb"] / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=100)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from textgen_cli.tokenizer import train_tokenizer

    moby = (REPO / "recipes/data/moby-dick/train.txt").read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        corpus = folder / "corpus.txt"
        with corpus.open("w", encoding="utf-8") as handle:
            written, copy = 0, 0
            while written < args.megabytes * 2**20:
                # number the copies so that the file is not one paragraph repeated forever
                text = moby.replace("\n", f" ({copy})\n")
                handle.write(text)
                written += len(text.encode("utf-8"))
                copy += 1
        tokenizer_dir = folder / "tokenizer"
        train_tokenizer([line for line in moby.splitlines() if line.strip()], 4096, 2).save_pretrained(tokenizer_dir)
        env = {**os.environ, "TEXTGEN_CACHE_DIR": str(folder / "cache"), "HF_DATASETS_CACHE": str(folder / "hf"), "HF_HUB_OFFLINE": "1"}
        results = {"megabytes": corpus.stat().st_size / 2**20, "cpu_count": os.cpu_count()}
        for run in ("cold", "cached"):
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", CHILD, str(REPO), str(corpus), str(tokenizer_dir)], env=env, capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["process_seconds"] = time.perf_counter() - start
            result["tokens_per_s"] = result["tokens"] / result["seconds"]
            result["cores_used"] = (result["cpu_seconds"] + result["worker_cpu_seconds"]) / result["seconds"]
            results[run] = result
            print(f"{run:<7} {result['seconds']:7.2f} s  {result['tokens_per_s']:>12,.0f} tokens/s  {result['cores_used']:.2f} cores "
                  f"({result['workers']} worker processes)  peak RSS {result['peak_rss_mb']:,.0f} MB  "
                  f"peak PSS with workers {result['peak_pss_total_mb']:,.0f} MB  cache hit: {result['cached']}")
    out = REPO / "benchmarks/results/data.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
