"""Where a metric's evaluate module is: a shipped name or a user's file or folder. Light (no numpy,
no evaluate), so that loading a recipe can check `eval.metrics` before any training."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from textgen_cli.core.errors import UserError
from textgen_cli.metrics.registry import METRIC_NAMES

_HERE = Path(__file__).resolve().parent


def _normalize(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _looks_like_path(entry: str) -> bool:
    return entry.endswith(".py") or "/" in entry or os.sep in entry or entry.startswith(("~", "."))


def resolve_metric_path(name_or_path: str) -> Path:
    """The absolute path of the module script for a shipped name or a user's file/directory.

    Shipped names (case-insensitive, '-' and '_' alike: "self-BLEU", "chrF") win over a directory
    of the same name in the working directory; write "./bleu" to mean the directory. A directory
    must contain a script of its own name (`mymetric/mymetric.py`), as evaluate requires.
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise UserError(f"metric entries must be non-empty strings, got {name_or_path!r}")
    entry = name_or_path.strip()
    key = _normalize(entry)
    if key in METRIC_NAMES:
        return _HERE / key / f"{key}.py"

    path = Path(entry).expanduser()
    if path.exists() or _looks_like_path(entry):
        path = path.resolve()
        if path.is_file():
            if path.suffix != ".py":
                raise UserError(f"metric module {entry!r} is not a .py file")
            return path
        if path.is_dir():
            script = path / f"{path.name}.py"
            if not script.is_file():
                raise UserError(
                    f"metric directory {entry!r} has no {path.name}.py (evaluate loads <dir>/<dir name>.py)"
                )
            return script
        raise UserError(f"metric module {entry!r} does not exist ({path})")

    close = difflib.get_close_matches(key, METRIC_NAMES, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UserError(
        f"unknown metric {entry!r}.{hint} Shipped metrics: {', '.join(METRIC_NAMES)}; "
        "or give a path to your own evaluate module (a .py file or a directory holding <dir>/<dir>.py)."
    )
