"""Each trained arm evaluated the same way, and its rows gathered into the columns of the table:
values, intervals, baselines, and the paired effect of pretraining."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from textgen_cli.comparison.columns import (
    Cell,
    Column,
    Model,
)

# --------------------------------------------------------------------------------------------
# Training what is missing
from textgen_cli.core.files import SUMMARY_FILE
from textgen_cli.core.progress import log
from textgen_cli.core.results import EvalReport, RunSummary


def evaluate_model(model: Model) -> None:
    """Reuse the stage's evaluation with the same eval hash (its default one, or a record under
    evals/<hash>/), else evaluate now (run_evaluate files it in the matching place)."""
    from textgen_cli.evaluation.eval_files import eval_hash, find_evaluation
    from textgen_cli.evaluation.evaluate import run_evaluate
    from textgen_cli.training.model_card import record_evaluation

    run_dir = model.loaded.run_dir(model.stage)
    wanted = eval_hash(model.loaded, model.stage, "test")
    found = find_evaluation(run_dir, wanted)
    if found is None:
        log(f"compare: evaluating {model.label}")
        report = run_evaluate(model.loaded, str(model.final_dir), None, "test", [])
        record_evaluation(report)
        found = Path(report.files["eval"]).parent
    else:
        report = EvalReport.read(found / "eval.json")
        log(f"compare: reusing the evaluation in {found / 'eval.json'}")
    model.eval = report
    read_predictions(model, found)


def read_predictions(model: Model, folder: Path) -> None:
    """The model's outputs on the test examples (for the bootstrap of the text metrics) and, when
    every example has them, its references' NLLs and bytes (for the bootstrap of bits per byte)."""
    records = [
        json.loads(line)
        for line in (folder / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    model.eval_dir = folder
    model.predictions = [r["prediction"] for r in records]
    scored = all(r.get("reference_nll") is not None and r.get("reference_bytes") for r in records)
    model.reference_scores = (
        [(float(r["reference_nll"]), int(r["reference_bytes"])) for r in records] if scored and records else None
    )


def collect(model: Model) -> None:
    """The summaries of every stage behind the model, for the cost rows and the curves: this stage,
    then the run it started from (`init_from` in its summary), and so on back to pretraining."""
    chain: list[tuple[Path, RunSummary]] = []
    run_dir: Path | None = model.loaded.run_dir(model.stage)
    while run_dir is not None and (run_dir / SUMMARY_FILE).is_file() and all(run_dir != seen for seen, _ in chain):
        summary = RunSummary.read(run_dir / SUMMARY_FILE)
        chain.insert(0, (run_dir, summary))
        run_dir = Path(summary.init_from).parent if summary.init_from else None
    model.run_dirs = [run_dir for run_dir, _ in chain]
    model.summaries = [summary for _, summary in chain]


def values_of(model: Model) -> dict[str, float]:
    e, s = model.eval, model.summaries
    values = dict(e.metrics)
    if e.likelihood["bits_per_byte"] is not None:
        values["bits_per_byte"] = e.likelihood["bits_per_byte"]
        values["perplexity"] = e.likelihood["perplexity"]
    values["val_loss"] = s[-1].final_val_loss
    values["parameters"] = s[-1].parameters
    values["tokens"] = sum(x.tokens for x in s)
    values["flops"] = sum(x.flops for x in s)
    values["wall_time_s"] = sum(x.wall_time_s for x in s)
    values["tokens_per_s"] = values["tokens"] / max(sum(x.train_time_s for x in s), 1e-9)
    values["peak_memory_mb"] = max(x.peak_memory_mb for x in s)
    values["generation_tokens_per_s"] = e.generation["tokens_per_s"]
    values.update(sanity_values(e))
    for r in e.robustness:
        for row in ("bleu", "chrf"):
            if row in r["metrics"]:
                values[f"{row}@{r['perturbation']}"] = r["metrics"][row]
                values[f"{row} drop@{r['perturbation']}"] = r["drop"][row]
    return values


def sanity_values(report: EvalReport) -> dict[str, float]:
    """The input-use check and the degeneration statistics of an eval report, as table rows."""
    values = {}
    use = report.input_use or {}
    if use.get("gap") is not None:
        values.update(
            input_bpb_true=use["bits_per_byte_true"],
            input_bpb_shuffled=use["bits_per_byte_shuffled"],
            input_gap=use["gap"],
        )
    degeneration = report.degeneration or {}
    for key in ("distinct_outputs_share", "repeated_4gram_rate"):
        if key in degeneration:
            values[key] = degeneration[key]
    return values


def intervals_of(model: Model) -> dict[str, tuple[float, float]]:
    """Bootstrap intervals of the clean rows and of the scores under each perturbation."""
    out = {row: (b["low"], b["high"]) for row, b in model.eval.intervals.items()}
    for r in model.eval.robustness:
        for row, b in r.get("intervals", {}).items():
            out[f"{row}@{r['perturbation']}"] = (b["low"], b["high"])
    return out


def build_columns(models: list[Model]) -> list[Column]:
    columns: dict[str, Column] = {}
    for model in models:
        columns.setdefault(model.label, Column(model.label, [])).models.append(model)
    for column in columns.values():
        per_seed = [values_of(m) for m in column.models]
        for row in per_seed[0]:
            xs = [v[row] for v in per_seed if row in v]
            cell = Cell(statistics.fmean(xs), n=len(xs), values=xs)
            if len(xs) > 1:
                cell.std = statistics.stdev(xs)
            elif row in intervals_of(column.models[0]):
                cell.low, cell.high = intervals_of(column.models[0])[row]
            column.cells[row] = cell
    return list(columns.values()) + baseline_columns(models)


def baseline_columns(models: list[Model]) -> list[Column]:
    """One column per baseline of the first model's evaluation (every model is scored on the same
    examples with the same metrics, so the baselines are the same for all)."""
    columns = []
    for baseline in models[0].eval.baselines:
        label = f"baseline: {baseline['label']}"
        columns.append(
            Column(label, [], {row: Cell(value) for row, value in baseline["metrics"].items()}, baseline=True)
        )
    return columns


def references_of(model: Model) -> list[str]:
    path = (model.eval_dir or model.loaded.run_dir(model.stage)) / "predictions.jsonl"
    return [json.loads(line)["reference"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def pretrained(model: Model) -> bool:
    """Whether a pretraining stage is behind the model (its own, or one it was initialised from)."""
    return any(summary.stage == "pretrain" for summary in model.summaries)


def pretraining_effects(columns: list[Column], n_resamples: int = 1000, seed: int = 1234) -> list[dict[str, Any]]:
    """For every pair of models where one has pretraining behind it and the other does not (the
    ablation "scratch finetune" against "pretrain, then finetune", e.g. with --match flops): the paired
    bootstrap of BLEU and chrF on the same test examples, pretrained minus scratch (first seed)."""
    from textgen_cli.evaluation.scores import versus

    model_columns = [c for c in columns if not c.baseline and c.models]
    effects = []
    for a in model_columns:
        for b in model_columns:
            ma, mb = a.models[0], b.models[0]
            if not (pretrained(ma) and not pretrained(mb)):
                continue
            references = references_of(ma)
            if not (len(ma.predictions) == len(mb.predictions) == len(references)):
                continue
            diff = versus(ma.predictions, mb.predictions, references, n_resamples, seed)
            verdicts = []
            for row, label in (("bleu", "BLEU"), ("chrf", "chrF")):
                d = diff[row]
                word = "helped" if d["low"] > 0 else ("hurt" if d["high"] < 0 else "no significant difference")
                verdicts.append((word, f"{label} {d['diff']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"))
            words = {w for w, _ in verdicts}
            answer = (
                ("pretraining " + words.pop())
                if len(words) == 1 and "no significant difference" not in words
                else (
                    "no significant difference from pretraining"
                    if words == {"no significant difference"}
                    else "mixed: pretraining " + ", ".join(f"{w} on {t.split()[0]}" for w, t in verdicts)
                )
            )
            flops = [sum(s.flops for s in m.summaries) for m in (ma, mb)]
            effects.append(
                {
                    "pretrained": a.label,
                    "scratch": b.label,
                    "answer": answer,
                    "detail": "; ".join(t for _, t in verdicts),
                    "versus": {row: diff[row] for row in ("bleu", "chrf")},
                    "flops": {"pretrained": flops[0], "scratch": flops[1]},
                    "method": f"paired bootstrap over the {len(references)} test examples ({n_resamples} resamples), {a.label} minus {b.label}, first seed",
                }
            )
    return effects
