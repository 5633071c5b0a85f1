"""What a finished stage and an evaluation leave on the disk: `summary.json` and `eval.json`.

`RunSummary` (written by train.py) and `EvalReport` (written by evaluate.py) are the contract between
the module that writes a file and every module that reads it (compare, report, the model card, the
CLI). Each is written with `to_dict()` (`dataclasses.asdict`) and read back into the same type with
`read(path)`, which names the file and the key when a key is missing or holds the wrong kind of
value, so a renamed key fails where the file is read, not later inside a table.

Fields with a default are the keys older files may lack (readers have always taken them as optional);
every other key is written by every version that reads it.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from textgen_cli.core.errors import UserError

T = TypeVar("T")


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field's annotation (int counts as float, as json writes 1e9 as 1000000000)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arm) for arm in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is not None:
        return isinstance(value, origin)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _kind(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _read_fields(cls: type[T], path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the values of cls's fields, the other keys) of the JSON object in `path`; UserError naming the file
    and the key when the file is unreadable, a key is missing or holds the wrong kind of value."""
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):
        if spec.name not in values:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise UserError(
                    f"{path}: key '{spec.name}' is missing (expected {_kind(hints[spec.name])}); was it written by textgen?"
                )
            continue
        if not _matches(values[spec.name], hints[spec.name]):
            raise UserError(
                f"{path}: key '{spec.name}' is {json.dumps(values[spec.name])[:60]}, expected {_kind(hints[spec.name])}"
            )
        known[spec.name] = values[spec.name]
    others = {key: value for key, value in values.items() if key not in known and key not in hints}
    return known, others


@dataclass(kw_only=True)
class RunSummary:
    """`<run>/<stage>/summary.json`: what one training stage did and where its model is
    (docs/training.md). The stage's own keys (`init_from`, `task`, `block_size`, `lora`, ...) are
    `notes`, written at the top level of the file after the common ones."""

    stage: str
    recipe: str
    recipe_name: str
    settings_hash: str
    stage_hash: str | None = None  # older summaries lack it: compare then trains the stage again
    family: str
    parameters: int
    steps: int
    batch_size: int
    grad_accum: int
    train_examples: int
    tokens: int
    encoder_tokens: int
    decoder_tokens: int
    flops: float = 0.0  # older summaries lack it
    wall_time_s: float
    train_time_s: float
    tokens_per_s: float
    final_train_loss: float | None
    initial_val_loss: float
    final_val_loss: float
    final_val_ppl: float
    skipped_steps: int
    resumed: bool
    peak_memory_mb: float
    device: str
    processes: int
    rank_weight_hashes: list[str]
    strategy: str
    global_batch: int
    seed: int
    versions: dict[str, str]
    run_dir: str
    final_dir: str
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def init_from(self) -> str | None:
        """The checkpoint the stage started from (none for a pretrain from scratch)."""
        return self.notes.get("init_from")

    @property
    def task(self) -> str | None:
        return self.notes.get("task")

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        return {**{key: value for key, value in values.items() if key != "notes"}, **values["notes"]}

    @classmethod
    def read(cls, path: Path) -> RunSummary:
        known, notes = _read_fields(cls, path)
        return cls(**known, notes=notes)


@dataclass(kw_only=True)
class EvalReport:
    """`eval.json`: one evaluation of a model on a split (docs/evaluate.md). The nested values
    (metrics, intervals, likelihood, baselines, ...) stay plain dicts keyed by metric or statistic."""

    model: str
    stage: str | None
    family: str
    recipe: str
    recipe_name: str
    settings_hash: str
    eval_hash: str | None = None
    split: str = "test"
    n_examples: int
    task: str
    decoding: dict[str, Any] | None = None
    metrics: dict[str, float]
    intervals: dict[str, dict[str, float]] = field(default_factory=dict)
    signatures: dict[str, str] = field(default_factory=dict)
    bootstrap: dict[str, Any] | None = None
    likelihood: dict[str, Any]
    prose: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] | None = None  # the first baseline (kept for older readers)
    baselines: list[dict[str, Any]] = field(default_factory=list)
    input_use: dict[str, Any] | None = None
    degeneration: dict[str, Any] | None = None
    robustness: list[dict[str, Any]] = field(default_factory=list)
    generation: dict[str, Any]
    eval_time_s: float
    examples_per_s: float
    timings: dict[str, float] = field(default_factory=dict)  # seconds per part: load, generation, metrics, ...
    verdict: dict[str, Any] | None = None  # verdict.judge's
    files: dict[str, str] = field(default_factory=dict)  # where eval.json and predictions.jsonl were written

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def read(cls, path: Path) -> EvalReport:
        known, _ = _read_fields(cls, path)  # keys of a newer version are left alone
        return cls(**known)
