#!/usr/bin/env python3
"""Data preparation: tokenize and pack a large text file (default 100 MB, Moby-Dick repeated), first
cold and then from the cache, each in a fresh process so that the peak resident memory (RSS) and the
CPU use of that step alone are measured. The CPU time counts the tokenizer worker processes that a
large file gets (textgen_cli.data.packing), and their memory is sampled too: the peak of the main process's
and the workers' proportional set sizes (PSS: pages shared between them counted once, which a
forked worker's RSS would count again).

    python benchmarks/bench_data.py               # part of `make bench`
    python benchmarks/bench_data.py --megabytes 20
    python benchmarks/bench_data.py --against-datasets-map --repeats 2

`--against-datasets-map` compares textgen's worker pool with the ecosystem's way,
`datasets.load_dataset("text")` + `Dataset.map(batched=True, num_proc=cores)` with run_clm-style
grouping, cold (empty caches) and cached (a second process on the same caches), in alternation,
each in a fresh process. Both write blocks of 256 from the same documents joined by eos.

Writes benchmarks/results/data.json (data-vs-datasets-map.json for the comparison).
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
from textgen_cli.data.packing import split_sources, packed_blocks
from textgen_cli.data.tokenizer import load_tokenizer

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

# The ecosystem's way (transformers' examples/pytorch/language-modeling/run_clm.py): tokenize with
# `map(batched=True, num_proc=N)`, then concatenate each batch of 1000 rows and cut it into blocks
# (`group_texts`, each batch's remainder dropped). Two changes make it do textgen's work and no
# more: blank lines are dropped and each document ends with eos (textgen's stream), and only
# input_ids are kept (run_clm also keeps attention_mask and a copy as labels).
MAP_CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, sys.argv[1])
from itertools import chain
from pathlib import Path
import datasets
from textgen_cli.data.packing import usable_cores
from textgen_cli.data.tokenizer import load_tokenizer

datasets.disable_progress_bars()
tokenizer = load_tokenizer(Path(sys.argv[3]))
eos, block_size, cores = tokenizer.eos_token_id, 256, usable_cores()

def tokenize(batch):
    texts = [text for text in batch["text"] if text.strip()]
    return {"input_ids": [ids + [eos] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]}

def group_texts(batch):
    ids = list(chain(*batch["input_ids"]))
    total = len(ids) // block_size * block_size
    return {"input_ids": [ids[i : i + block_size] for i in range(0, total, block_size)]}

usage = lambda who: (lambda r: r.ru_utime + r.ru_stime)(resource.getrusage(who))
before, before_children = usage(resource.RUSAGE_SELF), usage(resource.RUSAGE_CHILDREN)
start = time.perf_counter()
raw = datasets.load_dataset("text", data_files=sys.argv[2], split="train")
tokenized = raw.map(tokenize, batched=True, num_proc=cores, remove_columns=["text"])
blocks = tokenized.map(group_texts, batched=True, num_proc=cores)
blocks.set_format("numpy")
first = blocks[0]["input_ids"]  # touch the result, as training would
wall = time.perf_counter() - start
tokens = sum(len(ids) for ids in tokenized.with_format("arrow")["input_ids"].to_pylist()) if len(sys.argv) > 4 else None
print(json.dumps({"seconds": wall, "cpu_seconds": usage(resource.RUSAGE_SELF) - before,
                  "worker_cpu_seconds": usage(resource.RUSAGE_CHILDREN) - before_children, "workers": cores,
                  "blocks": len(blocks), "tokens": tokens, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_corpus(corpus: Path, megabytes: int) -> None:
    moby = (REPO / "recipes/data/moby-dick/train.txt").read_text(encoding="utf-8")
    with corpus.open("w", encoding="utf-8") as handle:
        written, copy = 0, 0
        while written < megabytes * 2**20:
            # number the copies so that the file is not one paragraph repeated forever
            text = moby.replace("\n", f" ({copy})\n")
            handle.write(text)
            written += len(text.encode("utf-8"))
            copy += 1


def run_child(script: str, corpus: Path, tokenizer_dir: Path, caches: Path) -> dict:
    env = {
        **os.environ,
        "TEXTGEN_CACHE_DIR": str(caches / "textgen"),
        "HF_DATASETS_CACHE": str(caches / "hf"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", script, str(REPO), str(corpus), str(tokenizer_dir)],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - start
    result["cores_used"] = (result["cpu_seconds"] + result["worker_cpu_seconds"]) / result["seconds"]
    result["load_average_1min"] = float(Path("/proc/loadavg").read_text().split()[0])
    return result


def against_datasets_map(args) -> None:
    """textgen's pool vs datasets.map, cold then cached, alternating which goes first."""
    import statistics

    from textgen_cli.data.tokenizer import train_tokenizer

    moby = (REPO / "recipes/data/moby-dick/train.txt").read_text(encoding="utf-8")
    runs: dict[str, list[dict]] = {f"{way}_{run}": [] for way in ("pool", "map") for run in ("cold", "cached")}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        corpus = folder / "corpus.txt"
        make_corpus(corpus, args.megabytes)
        tokenizer_dir = folder / "tokenizer"
        train_tokenizer([line for line in moby.splitlines() if line.strip()], 4096, 2).save_pretrained(tokenizer_dir)
        for repeat in range(args.repeats):
            ways = [("pool", CHILD), ("map", MAP_CHILD)]
            for way, script in ways if repeat % 2 == 0 else reversed(ways):
                caches = folder / f"caches-{way}-{repeat}"  # empty: a cold run
                for run in ("cold", "cached"):
                    result = run_child(script, corpus, tokenizer_dir, caches)
                    runs[f"{way}_{run}"].append(result)
                    print(
                        f"repeat {repeat + 1} {way:<4} {run:<6} {result['seconds']:7.2f} s  {result['cores_used']:.2f} cores  {result['blocks']:,} blocks  "
                        f"peak RSS {result['peak_rss_mb']:,.0f} MB  load average {result['load_average_1min']:.2f}",
                        flush=True,
                    )
    results = {
        "megabytes": args.megabytes,
        "repeats": args.repeats,
        "median_seconds": {name: statistics.median(r["seconds"] for r in rs) for name, rs in runs.items()},
        "runs": runs,
    }
    for name, seconds in results["median_seconds"].items():
        print(f"{name:<12} median {seconds:7.2f} s")
    out = REPO / "benchmarks/results/data-vs-datasets-map.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument(
        "--against-datasets-map", action="store_true", help="textgen's worker pool against datasets.map(num_proc=cores)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="--against-datasets-map: alternations")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.against_datasets_map:
        against_datasets_map(args)
        return
    from textgen_cli.data.tokenizer import train_tokenizer

    moby = (REPO / "recipes/data/moby-dick/train.txt").read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        corpus = folder / "corpus.txt"
        make_corpus(corpus, args.megabytes)
        tokenizer_dir = folder / "tokenizer"
        train_tokenizer([line for line in moby.splitlines() if line.strip()], 4096, 2).save_pretrained(tokenizer_dir)
        env = {
            **os.environ,
            "TEXTGEN_CACHE_DIR": str(folder / "cache"),
            "HF_DATASETS_CACHE": str(folder / "hf"),
            "HF_HUB_OFFLINE": "1",
        }
        results = {"megabytes": corpus.stat().st_size / 2**20, "cpu_count": os.cpu_count()}
        for run in ("cold", "cached"):
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(REPO), str(corpus), str(tokenizer_dir)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["process_seconds"] = time.perf_counter() - start
            result["tokens_per_s"] = result["tokens"] / result["seconds"]
            result["cores_used"] = (result["cpu_seconds"] + result["worker_cpu_seconds"]) / result["seconds"]
            results[run] = result
            print(
                f"{run:<7} {result['seconds']:7.2f} s  {result['tokens_per_s']:>12,.0f} tokens/s  {result['cores_used']:.2f} cores "
                f"({result['workers']} worker processes)  peak RSS {result['peak_rss_mb']:,.0f} MB  "
                f"peak PSS with workers {result['peak_pss_total_mb']:,.0f} MB  cache hit: {result['cached']}"
            )
    out = REPO / "benchmarks/results/data.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
