"""Summarise gpu_check.sh's training runs: tokens/s, MFU against the measured bf16 matmul peak,
peak memory. Usage: python scripts/gpu_report.py SUMMARY.json ..."""

from __future__ import annotations

import json
import sys
import time

import torch


def bf16_peak_flops(n: int = 8192, repeats: int = 20) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def main(paths: list[str]) -> None:
    peak = bf16_peak_flops()
    print(f"measured dense bf16 matmul peak: {peak / 1e12:.1f} TFLOP/s")
    print(f"{'family':<9} {'params':>12} {'tokens/s':>12} {'MFU':>7} {'peak MB':>9}")
    for path in paths:
        summary = json.load(open(path))
        achieved = summary["flops"] / summary["train_time_s"]
        print(f"{summary['family']:<9} {summary['parameters']:>12,} {summary['tokens_per_s']:>12,.0f} {achieved / peak:>7.1%} {summary['peak_memory_mb']:>9,.0f}")


if __name__ == "__main__":
    main(sys.argv[1:])
