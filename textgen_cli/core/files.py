"""Where runs live on disk: `runs/<recipe name>/<stage>/`, its file names, the trained model a recipe
has, and writing a file atomically. (A stage's folder while it trains is `training/run_dir.py`.)

A stage writes into `<stage>.partial/` and only a finished stage is renamed to `<stage>/`, so a
failed or interrupted run never leaves a half-written result where a finished one is expected, and
never destroys the earlier finished result until the new one is complete. An interrupted stage
keeps its `.partial/` with checkpoints, for `--resume`.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textgen_cli.core import diskspace
from textgen_cli.core.errors import UserError
from textgen_cli.core.schema import STAGES

if TYPE_CHECKING:
    from textgen_cli.core.loaded_recipe import LoadedRecipe

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
RECIPE_FILE = "recipe.yaml"
FINAL_DIR = "final"


def check_run_location(path: Path, keep: bool = True) -> None:
    """Refuse (exit 2) a stage's run directory `path` that cannot be written: a file in its way, a
    read-only or unwritable run.root. `keep=False`: leave no folders behind (a check before any work)."""
    for parent in (path.parent, *path.parent.parents):
        if _is_a_file(parent):
            raise UserError(f"run directory '{path}': '{parent}' is a file, expected a directory")
    if _is_a_file(path):
        raise UserError(f"run directory '{path}' is a file, expected a directory")
    diskspace.check_writable(path.parent, keep=keep)


def _is_a_file(path: Path) -> bool:
    """Something other than a folder stands at `path`. One stat, so a folder that another process's
    write check removes meanwhile (check_writable with keep=False) is not taken for a file."""
    try:
        return not stat.S_ISDIR(path.stat().st_mode)
    except (FileNotFoundError, NotADirectoryError):  # absent, or below a file (the caller checks that one)
        return False


def trained_model(loaded: LoadedRecipe, stage: str | None = None) -> tuple[Path, str]:
    """The recipe's latest trained model: the output of its last stage that has one (finetune before
    pretrain), or of `stage`."""
    candidates = [stage] if stage else list(reversed(STAGES))
    for name in candidates:
        path = loaded.run_dir(name) / FINAL_DIR
        if path.is_dir():
            return path, name
    if stage:
        raise UserError(
            f"recipe '{loaded.name}' has no trained {stage} model: '{loaded.run_dir(stage) / FINAL_DIR}' does not exist; "
            f"run `textgen {stage} --recipe {loaded.path.name}` first"
        )
    first = loaded.recipe.stages[0] if loaded.recipe.stages else "pretrain"
    tried = ", ".join(f"'{loaded.run_dir(name) / FINAL_DIR}'" for name in candidates)
    raise UserError(
        f"recipe '{loaded.name}' has no trained model (none of {tried} exists); "
        f"run `textgen {first} --recipe {loaded.path.name}` first, or pass --model DIR"
    )


def checkpoint_stage(path: Path) -> str | None:
    """Which stage wrote a checkpoint: from its run's summary.json, else the folder name."""
    summary = path.parent / SUMMARY_FILE
    if summary.is_file():
        try:
            stage = json.loads(summary.read_text(encoding="utf-8")).get("stage")
            if stage in STAGES:
                return stage
        except (ValueError, UnicodeDecodeError, AttributeError):
            pass
    return path.parent.name if path.parent.name in STAGES else None


NOTHING_CHANGED = "the file is unchanged (nothing was written): free some space, then run again"


def write_text_atomic(path: Path, text: str, then: str | Callable[[], str] = NOTHING_CHANGED) -> None:
    """Replace `path` with `text` in one step: a crash leaves the old content or the new, and a full
    disk raises DiskFull (exit 1) naming `path` and the space needed, followed by `then`, with the
    temporary copy removed and the old content untouched."""
    # one temporary name per process: two processes may write the same shared file (the packing cache)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = text.encode("utf-8")
    with diskspace.writing("file", path, len(data), then, partial=tmp):
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)


def read_metrics(run_path: Path) -> list[dict[str, Any]]:
    with (run_path / METRICS_FILE).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
