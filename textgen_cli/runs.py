"""Run directories: `runs/<recipe name>/<stage>/`.

A stage writes into `<stage>.partial/` and only a finished stage is renamed to `<stage>/`, so a
failed or interrupted run never leaves a half-written result where a finished one is expected, and
never destroys the earlier finished result until the new one is complete.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import sys
from pathlib import Path
from typing import Any

from textgen_cli import __version__
from textgen_cli.errors import UserError

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
RECIPE_FILE = "recipe.yaml"
FINAL_DIR = "final"


class RunDir:
    def __init__(self, path: Path):
        self.path = path
        self.work = path.with_name(path.name + ".partial")

    def begin(self) -> None:
        for parent in (self.path.parent, *self.path.parent.parents):
            if parent.exists() and not parent.is_dir():
                raise UserError(f"run directory '{self.path}': '{parent}' is a file, expected a directory")
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"run directory '{self.path}' is a file, expected a directory")
        if self.work.exists():
            shutil.rmtree(self.work)  # what an earlier crashed attempt left; the finished result is elsewhere
        self.work.mkdir(parents=True)

    def append_metrics(self, record: dict[str, Any]) -> None:
        with (self.work / METRICS_FILE).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def write_json(self, name: str, value: Any) -> None:
        write_text_atomic(self.work / name, json.dumps(value, indent=2) + "\n")

    def commit(self) -> None:
        """Swap the finished work in place of any previous result."""
        previous = self.path.with_name(self.path.name + ".previous")
        if previous.exists():
            shutil.rmtree(previous)
        if self.path.exists():
            os.replace(self.path, previous)
        os.replace(self.work, self.path)
        shutil.rmtree(previous, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_metrics(run_path: Path) -> list[dict[str, Any]]:
    with (run_path / METRICS_FILE).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def peak_memory_mb(device_type: str) -> float:
    if device_type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    # ru_maxrss is in KiB on Linux: the peak resident set of this process
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def versions() -> dict[str, str]:
    import accelerate
    import tokenizers
    import torch
    import transformers

    return {
        "textgen": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "accelerate": accelerate.__version__,
    }
