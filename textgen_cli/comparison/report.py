"""The files of a comparison report: report.md, report.html (self-contained), metrics.csv,
metrics.json and the plots as PNG. Written to a temporary folder and renamed into place."""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textgen_cli import __version__
from textgen_cli.comparison.columns import Column, Model, verdicts
from textgen_cli.comparison.report_html import report_html
from textgen_cli.comparison.report_markdown import report_markdown
from textgen_cli.comparison.report_plots import _one_per_column, plots
from textgen_cli.core.files import write_text_atomic
from textgen_cli.metrics.registry import ROW_BY_NAME

N_EXAMPLES = 5


def provenance(models: list[Model], match: str | None, seeds: int) -> dict[str, Any]:
    import importlib.metadata as md

    packages = {}
    for name in (
        "torch",
        "transformers",
        "tokenizers",
        "accelerate",
        "datasets",
        "evaluate",
        "sacrebleu",
        "rouge-score",
        "omegaconf",
    ):
        try:
            packages[name] = md.version(name)
        except md.PackageNotFoundError:
            packages[name] = "not installed"
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    signatures = {}
    for model in models:
        signatures.update(model.eval.signatures)
    return {
        "textgen": __version__,
        "git_commit": commit,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": packages,
        "devices": sorted({s.device for m in models for s in m.summaries}),
        "seeds": sorted({m.seed for m in models}),
        "match": match,
        "seeds_per_recipe": seeds,
        "recipes": {
            m.loaded.name: {
                "path": str(m.loaded.path),
                "settings_hash": m.loaded.settings_hash(),
                "overrides": m.loaded.overrides,
            }
            for m in models
        },
        "metric_signatures": signatures,
        "decoding": models[0].eval.decoding,
        "bootstrap": models[0].eval.bootstrap,
        "test_examples": models[0].eval.n_examples,
        "flops_formula": "6 x non-embedding parameters a token passes (encoder or decoder + output layer) x tokens + 12 x hidden x (query x key positions) per layer for attention, at each sequence's actual lengths (encoder self, decoder self, cross)",
    }


def metric_records(columns: list[Column], models: list[Model]) -> list[dict[str, Any]]:
    signatures = {}
    for model in models:
        signatures.update(model.eval.signatures)
    records = []
    for column in columns:
        for row, cell in column.cells.items():
            records.append(
                {
                    "model": column.label,
                    "kind": "baseline" if column.baseline else "model",
                    "metric": row,
                    "group": ROW_BY_NAME[row].group
                    if row in ROW_BY_NAME
                    else ("robustness" if "@" in row else "other"),
                    "value": cell.value,
                    "low": cell.low,
                    "high": cell.high,
                    "std": cell.std,
                    "n_seeds": cell.n,
                    "signature": signatures.get(row.split("@")[0].split(" ")[0], ""),
                }
            )
    return records


def flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(values, dict):
        out: dict[str, Any] = {}
        for key, value in values.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: values}


def recipe_diff(models: list[Model]) -> list[tuple[str, list[str]]]:
    """Resolved settings that differ between the compared recipes."""
    seen: dict[str, dict[str, Any]] = {}
    for model in models:
        seen.setdefault(model.loaded.name, flatten(model.loaded.to_dict()))
    keys = sorted({key for flat in seen.values() for key in flat})
    return [
        (key, [json.dumps(flat.get(key)) for flat in seen.values()])
        for key in keys
        if len({json.dumps(flat.get(key)) for flat in seen.values()}) > 1
    ]


def examples(models: list[Model]) -> list[dict[str, Any]]:
    first = models[0]
    lines = (
        ((first.eval_dir or first.loaded.run_dir(first.stage)) / "predictions.jsonl")
        .read_text(encoding="utf-8")
        .splitlines()[:N_EXAMPLES]
    )
    out = []
    for index, line in enumerate(lines):
        record = json.loads(line)
        source = (
            record["source"]
            if isinstance(record["source"], str)
            else " / ".join(f"{t['role']}: {t['content']}" for t in record["source"][-3:])
        )
        out.append(
            {
                "source": source,
                "reference": record["reference"],
                "outputs": {
                    m.label: (m.predictions[index] if index < len(m.predictions) else "")
                    for m in _one_per_column(models)
                },
            }
        )
    return out


def runs_used(models: list[Model]) -> list[dict[str, Any]]:
    out = []
    for model in models:
        for run_dir, summary in zip(model.run_dirs, model.summaries):
            out.append(
                {
                    "model": model.label,
                    "stage": summary.stage,
                    "run": str(run_dir),
                    "reused": model.reused.get(summary.stage, True),
                    "steps": summary.steps,
                    "stage_hash": summary.stage_hash,
                }
            )
    return out


@dataclass
class ReportContent:
    """Everything report.md and report.html show, gathered once."""

    columns: list[Column]
    rows: list[dict[str, Any]]
    models: list[Model]
    effects: list[dict[str, Any]]  # collect.pretraining_effects of the columns (the same the terminal shows)
    settings: list  # settings_diff's effective settings
    confounded: list[str]  # the confounds among them
    primary: str | None
    factors: Sequence[str]  # the declared factors that differ between the arms
    prov: dict[str, Any]
    used: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    diff: list[tuple[str, list[str]]]

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys(m.loaded.name for m in self.models))


def write_report(
    folder: Path,
    columns: list[Column],
    rows: list[dict[str, Any]],
    models: list[Model],
    match: str | None,
    seeds: int,
    effects: list[dict[str, Any]],
    settings: list | None = None,
    confounded: list[str] | None = None,
    primary: str | None = None,
    factors: Sequence[str] = (),
) -> None:
    """`effects`: collect.pretraining_effects of the columns (the same the terminal shows);
    `settings` / `confounded`: settings_diff's effective settings and the confounds among them;
    `factors`: the declared factors that differ between the arms."""
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        content = ReportContent(
            columns,
            rows,
            models,
            effects,
            settings or [],
            confounded or [],
            primary,
            factors,
            prov=provenance(models, match, seeds),
            used=runs_used(models),
            samples=examples(models),
            diff=recipe_diff(models),
        )
        records = metric_records(columns, models)
        write_text_atomic(tmp / "metrics.json", metrics_json(content, records))
        write_text_atomic(tmp / "metrics.csv", metrics_csv(records))
        images = plots(tmp, columns, models)
        write_text_atomic(tmp / "report.md", report_markdown(content))
        write_text_atomic(tmp / "report.html", report_html(content, images))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def metrics_json(c: ReportContent, records: list[dict[str, Any]]) -> str:
    return json.dumps(
        {
            "metrics": records,
            "verdicts": [{"model": label, **verdict} for label, verdict in verdicts(c.columns)],
            "pretraining": c.effects,
            "confounded": c.confounded,
            "declared_factors": list(c.factors),
            "primary_metric": c.primary,
            "settings": [vars(x) for x in c.settings],
            "provenance": c.prov,
            "runs": c.used,
        },
        indent=2,
    )


def metrics_csv(records: list[dict[str, Any]]) -> str:
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows(records)
    return table.getvalue()
