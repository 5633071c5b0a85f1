"""Where an evaluation is written and found again: `<run>/<stage>/evals/<hash>/` (the hash of the
settings that decide the scores), and the files in it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from textgen_cli.core.errors import UserError
from textgen_cli.core.files import write_text_atomic
from textgen_cli.core.loaded_recipe import settings_digest
from textgen_cli.core.results import EvalReport
from textgen_cli.core.stages import STAGES
from textgen_cli.data.readers import EvalExample


def eval_hash(loaded, stage: str | None, split: str) -> str:
    """What an evaluation depends on: the model's stage settings, the eval and decoding settings, the
    split file. `textgen compare` reuses an eval.json whose hash matches."""
    r = loaded.recipe
    return settings_digest(
        {
            "model": loaded.stage_hash(stage) if stage in STAGES else None,
            "eval": dataclasses.asdict(r.eval),
            "generate": dataclasses.asdict(r.generate),
            "split": getattr(r.data.finetune, split),
        }
    )


EVALS_DIR = "evals"


def output_dir(generator, explicit: str | None, split: str = "test", digest: str | None = None) -> Path:
    """Where an evaluation's files go. --output DIR: there. A textgen run's model: the stage's default
    evaluation, `<stage>/eval.json` beside the run files, is the first test-split evaluation made
    of the stage (normally the one right after training) and is only ever replaced by the same
    evaluation (same eval hash); any other evaluation (other settings, split or test file) gets its
    own `<stage>/evals/<eval hash>/`, so that no evaluation overwrites another."""
    if explicit:
        return Path(explicit)
    if generator.path.name != "final":
        raise UserError(
            f"--model {generator.path} is not a textgen run's final/ directory; give --output DIR for the evaluation files"
        )
    stage_dir = generator.path.parent
    if digest is None or (split == "test" and default_slot_open(stage_dir, digest)):
        return stage_dir
    return stage_dir / EVALS_DIR / digest


def default_slot_open(stage_dir: Path, digest: str) -> bool:
    """No default evaluation yet, or it is this very evaluation (same eval hash)."""
    existing = stage_dir / "eval.json"
    if not existing.is_file():
        return True
    try:
        return json.loads(existing.read_text(encoding="utf-8")).get("eval_hash") == digest
    except ValueError:
        return False  # unreadable: keep it for a person to look at, write elsewhere


def find_evaluation(stage_dir: Path, digest: str) -> Path | None:
    """The folder holding this stage's evaluation with this eval hash, if one was made."""
    for folder in (stage_dir, stage_dir / EVALS_DIR / digest):
        try:
            if (
                json.loads((folder / "eval.json").read_text(encoding="utf-8")).get("eval_hash") == digest
                and (folder / "predictions.jsonl").is_file()
            ):
                return folder
        except (OSError, ValueError):
            continue
    return None


def write_outputs(
    folder: Path,
    split: str,
    report: EvalReport,
    examples: list[EvalExample],
    predictions: list[str],
    robustness: list[dict[str, Any]],
    reference_scores: dict[int, dict[str, float]] | None = None,
) -> None:
    """predictions.jsonl: one line per example, with the reference's NLL under its own and a shuffled
    source where the input-use check scored it; eval.json; the perturbed predictions."""
    suffix = "" if split == "test" else f"-{split}"
    folder.mkdir(parents=True, exist_ok=True)
    scores = reference_scores or {}
    lines = [
        json.dumps(
            {"id": e.id, "source": e.prompt, "reference": e.reference, "prediction": p, **scores.get(i, {})},
            ensure_ascii=False,
        )
        for i, (e, p) in enumerate(zip(examples, predictions))
    ]
    write_text_atomic(folder / f"predictions{suffix}.jsonl", "\n".join(lines) + "\n")
    for r in robustness:
        noisy = [
            json.dumps(
                {
                    "id": e.id,
                    "source": prompt,
                    "reference": e.reference,
                    "prediction": p,
                    "perturbation": r["perturbation"],
                },
                ensure_ascii=False,
            )
            for e, prompt, p in zip(examples, r["prompts"], r["predictions"])
        ]
        write_text_atomic(folder / f"predictions{suffix}-{r['kind']}-{r['rate']:g}.jsonl", "\n".join(noisy) + "\n")
    report.files = {
        "eval": str((folder / f"eval{suffix}.json").resolve()),
        "predictions": str((folder / f"predictions{suffix}.jsonl").resolve()),
    }
    write_text_atomic(folder / f"eval{suffix}.json", json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
