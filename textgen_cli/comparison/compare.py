"""`textgen compare`: train what is missing, evaluate every model the same way, write one report.

Every model is evaluated on the same test examples with the same metrics and decoding settings (the
first recipe's `eval:` and `generate:` sections). Finished stages whose settings hash matches are
reused, never retrained. `--match flops|tokens` sets each recipe's step counts so that every recipe
gets the first recipe's compute (or token) budget, stage by stage.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from textgen_cli.comparison.columns import (
    Cell,
    Column,
    Model,
    controlled_line,
    effect_lines,
    lead_mark,
    legend,
    verdicts,
    withheld_lines,
)
from textgen_cli.comparison.report import write_report
from textgen_cli.core.errors import UserError
from textgen_cli.core.files import FINAL_DIR, RECIPE_FILE, SUMMARY_FILE
from textgen_cli.core.progress import log
from textgen_cli.core.results import EvalReport, RunSummary
from textgen_cli.core.stages import EVALUATED_STAGES, STAGES, section_of
from textgen_cli.metrics.registry import TABLE_ROWS
from textgen_cli.models.flops import Lengths
from textgen_cli.recipe import LoadedRecipe, load_recipe
from textgen_cli.training import run_stage

# --------------------------------------------------------------------------------------------
# Training what is missing


def stage_done(loaded: LoadedRecipe, stage: str) -> bool:
    summary = loaded.run_dir(stage) / SUMMARY_FILE
    if not summary.is_file() or not (loaded.run_dir(stage) / FINAL_DIR).is_dir():
        return False
    try:
        return RunSummary.read(summary).stage_hash == loaded.stage_hash(stage)
    except UserError:  # unreadable: trained again
        return False


def with_overrides(loaded: LoadedRecipe, extra: list[str]) -> LoadedRecipe:
    return load_recipe(str(loaded.path), [*loaded.overrides, *extra])


def finetune_step_inputs(loaded: LoadedRecipe, stage: str) -> tuple[Lengths, Any]:
    """The lengths of one mean finetuning example (flops.Lengths, from the real tokenized data) and
    the model the stage starts from (random weights for `model.init_from: scratch`)."""
    from textgen_cli.training.finetune import build_examples, prepare, starting_point
    from textgen_cli.training.step import count_lengths

    start = starting_point(loaded) if stage == "finetune" else str(loaded.run_dir("finetune") / FINAL_DIR)
    setup = prepare(loaded, start, stage)
    train_set, _, _ = build_examples(loaded, setup, stage)
    n = min(len(train_set), 512)
    return count_lengths(train_set.collate(list(range(n)), 0)).scaled(1 / n), setup.model


def step_cost(loaded: LoadedRecipe, stage: str, match: str) -> float:
    """FLOPs (or tokens) of one optimizer step of `stage`, from the recipe's model and data (the
    stages before it must be done: finetuning's tokens come from its starting model's tokenizer)."""
    from textgen_cli.models import role_for
    from textgen_cli.models.flops import flops_model, pretrain_tokens_per_sequence

    r = loaded.recipe
    sequences = r.train.batch_size * r.train.grad_accum
    if stage == "pretrain":
        enc, dec = pretrain_tokens_per_sequence(
            r.model.family, r.model.context, r.pretrain.mask_ratio, r.pretrain.poisson_lambda
        )
        example = Lengths.of_sequence(enc, dec)
        model = role_for(r.model.family).build(r.model, _FakeVocab(r.tokenizer.vocab_size))
    else:
        example, model = finetune_step_inputs(loaded, stage)
    if match == "flops":
        return flops_model(model).flops(example) * sequences
    return (example.encoder + example.decoder) * sequences


def match_budgets(entries: list[LoadedRecipe], stage: str, match: str) -> list[LoadedRecipe]:
    """Set `<stage>.steps` of every recipe so that its FLOPs (or tokens) equal the first recipe's."""
    from textgen_cli.models.flops import matched_steps

    per_step = [step_cost(loaded, stage, match) for loaded in entries]
    section = section_of(stage)
    budget = per_step[0] * getattr(entries[0].recipe, section).steps
    matched = [entries[0]]
    for loaded, cost in zip(entries[1:], per_step[1:]):
        steps = matched_steps(budget, cost)
        log(f"compare: --match {match}: {loaded.name} {stage} gets {steps} steps ({cost * steps:.3g} vs {budget:.3g})")
        matched.append(with_overrides(loaded, [f"{section}.steps={steps}"]))
    return matched


def last_stage_steps(budget: float, stages: list[tuple[str, float, int]], name: str = "") -> int:
    """Total-compute matching for a recipe whose stages differ from the first recipe's: every stage
    but the last keeps its own steps; the last gets what is left of the first recipe's whole
    budget. `stages`: (stage, cost per step, steps) in order; the last entry's steps are ignored."""
    from textgen_cli.models.flops import matched_steps

    spent = sum(cost * steps for _, cost, steps in stages[:-1])
    if spent >= budget:
        raise UserError(
            f"--match: recipe '{name}' spends {spent:.3g} in {', '.join(s for s, _, _ in stages[:-1])} before its last stage, "
            f"more than the first recipe's whole budget {budget:.3g}; lower those stages' steps"
        )
    return matched_steps(budget - spent, stages[-1][1])


class _FakeVocab:
    """Enough of a tokenizer for a builder to size a model before the real tokenizer exists."""

    def __init__(self, size: int):
        self.size = size
        self.pad_token_id, self.bos_token_id, self.eos_token_id = 0, 1, 2

    def __len__(self) -> int:
        return self.size


def train_or_reuse(loaded: LoadedRecipe, stage: str, reused: dict[tuple[str, str], bool]) -> None:
    if stage_done(loaded, stage):
        log(f"compare: reusing {loaded.run_dir(stage)} (same settings)")
        reused[(loaded.name, stage)] = True
    else:
        log(f"compare: training {loaded.name} {stage}")
        run_stage(loaded, stage)
        reused[(loaded.name, stage)] = False


def train_all(entries: list[LoadedRecipe], match: str | None) -> tuple[list[LoadedRecipe], dict[tuple[str, str], bool]]:
    """Run, stage by stage across recipes, every stage not already done with the same settings.

    With --match, recipes with the first recipe's stage list are matched stage by stage; a recipe
    whose stage list differs (e.g. `[finetune]` from scratch against `[pretrain, finetune]`) is
    matched on the TOTAL: its last stage gets the first recipe's whole budget minus what its own
    earlier stages spend."""
    reused: dict[tuple[str, str], bool] = {}
    first_stages = list(entries[0].recipe.stages)
    same = [i for i, loaded in enumerate(entries) if list(loaded.recipe.stages) == first_stages]
    differing = [i for i in range(len(entries)) if i not in same] if match else []
    staged = [i for i in range(len(entries)) if i not in differing]
    for stage in STAGES:
        having = [i for i in staged if stage in entries[i].recipe.stages]
        if not having:
            continue
        if match and len(having) > 1:
            matched = match_budgets([entries[i] for i in having], stage, match)
            for i, loaded in zip(having, matched):
                entries[i] = loaded
        for i in having:
            train_or_reuse(entries[i], stage, reused)
    if differing:
        first = entries[0]
        budget = sum(
            step_cost(first, stage, match) * getattr(first.recipe, section_of(stage)).steps for stage in first_stages
        )  # type: ignore[arg-type]
        for i in differing:
            entries[i] = train_to_total(entries[i], budget, match, first, reused)  # type: ignore[arg-type]
    return entries, reused


def train_to_total(
    loaded: LoadedRecipe, budget: float, match: str, first: LoadedRecipe, reused: dict[tuple[str, str], bool]
) -> LoadedRecipe:
    """Train `loaded` stage by stage; its last stage's steps match the first recipe's total budget."""
    stages = list(loaded.recipe.stages)
    plan: list[tuple[str, float, int]] = []
    for k, stage in enumerate(stages):
        section = section_of(stage)
        cost = step_cost(loaded, stage, match)  # its earlier stages are done by now
        if k == len(stages) - 1:
            steps = last_stage_steps(budget, [*plan, (stage, cost, 0)], loaded.name)
            spent = sum(c * n for _, c, n in plan) + cost * steps
            log(
                f"compare: --match {match}: {loaded.name} {stage} gets {steps} steps "
                f"(total {spent:.3g} vs {budget:.3g}: {first.name}'s {' + '.join(first.recipe.stages)})"
            )
            loaded = with_overrides(loaded, [f"{section}.steps={steps}"])
        plan.append((stage, cost, getattr(loaded.recipe, section).steps))
        train_or_reuse(loaded, stage, reused)
    return loaded


# --------------------------------------------------------------------------------------------
# Evaluating every model the same way


def common_settings(loaded: LoadedRecipe, reference: LoadedRecipe) -> LoadedRecipe:
    """`loaded` with the reference recipe's eval and generate sections: one way to measure."""
    recipe = dataclasses.replace(loaded.recipe, eval=reference.recipe.eval, generate=reference.recipe.generate)
    return LoadedRecipe(recipe=recipe, path=loaded.path, overrides=loaded.overrides)


def evaluate_model(model: Model) -> None:
    """Reuse the stage's evaluation with the same eval hash (its default one, or a record under
    evals/<hash>/), else evaluate now (run_evaluate files it in the matching place)."""
    from textgen_cli.evaluation.evaluate import eval_hash, find_evaluation, run_evaluate
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
    model.eval_dir = found
    model.predictions = [
        json.loads(line)["prediction"]
        for line in (found / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]


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


# --------------------------------------------------------------------------------------------
# The comparison table


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


def format_value(row: str, cell: Cell) -> str:
    v = cell.value
    if row in ("parameters", "tokens"):
        text = f"{v:,.0f}"
    elif row == "flops":
        text = f"{v:.3g}"
    elif row in ("wall_time_s", "tokens_per_s", "peak_memory_mb", "generation_tokens_per_s"):
        text = f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}"
    elif abs(v) >= 10:
        text = f"{v:.2f}"
    else:
        text = f"{v:.4f}"
    if cell.std is not None:
        text += f" ± {cell.std:.2g}"
    elif cell.low is not None:
        text += f" [{cell.low:.3g}, {cell.high:.3g}]"
    return text


def table_rows(
    columns: list[Column], n_resamples: int, seed: int, primary: str = "bleu", confounded: list[str] | None = None
) -> list[dict[str, Any]]:
    """Rows for every output: group, label, formatted cells, the best column and whether its lead
    counts (significance.py: the two-level bootstrap, Holm, the rules that withhold a star)."""
    from textgen_cli.comparison.significance import decide, row_lead

    model_columns = [c for c in columns if not c.baseline and c.models]
    references = references_of(model_columns[0].models[0]) if model_columns else []
    rows = []
    known = {row.name for row in TABLE_ROWS}
    extra = sorted({row for c in columns for row in c.cells if row not in known and ("@" in row)})
    definitions = [(row.group, row.name, row.label, row.higher_is_better) for row in TABLE_ROWS]
    definitions += [("robustness", row, row, " drop@" not in row) for row in extra]
    for group, row, label, higher in definitions:
        if not any(row in c.cells for c in columns):
            continue
        lead = row_lead(columns, row, higher, references, n_resamples, seed) if higher is not None else None
        rows.append(
            {
                "group": group,
                "row": row,
                "label": label,
                "cells": [format_value(row, c.cells[row]) if row in c.cells else "" for c in columns],
                "best": lead.best if lead else None,
                "tested": bool(lead and lead.tested),
                "significant": bool(lead and lead.significant),
                "withheld": None,
                "test": lead.test if lead else "not ranked",
                "p": lead.p if lead else None,
                "diff": lead.diff if lead else None,
                "higher_is_better": higher,
            }
        )
    decide(rows, columns, primary, confounded or [])
    return rows


def pretrained(model: Model) -> bool:
    """Whether a pretraining stage is behind the model (its own, or one it was initialised from)."""
    return any(summary.stage == "pretrain" for summary in model.summaries)


def pretraining_effects(columns: list[Column], n_resamples: int = 1000, seed: int = 1234) -> list[dict[str, Any]]:
    """For every pair of models where one has pretraining behind it and the other does not (the
    ablation "scratch finetune" against "pretrain, then finetune", e.g. with --match flops): the paired
    bootstrap of BLEU and chrF on the same test examples, pretrained minus scratch (first seed)."""
    from textgen_cli.evaluation.evaluate import versus

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


def print_table(
    columns: list[Column],
    rows: list[dict[str, Any]],
    stream=None,
    settings: list | None = None,
    confounded: list[str] | None = None,
    primary: str | None = None,
    effects: list[dict[str, Any]] = (),
    factors: Sequence[str] = (),
) -> None:
    """The judged table in the terminal; `effects`: the table's pretraining effects (judged_table)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from textgen_cli.evaluation.verdict import verdict_lines

    console = Console(file=stream, width=max(100, 32 + 30 * len(columns)))
    if settings is not None:
        style = "bold red" if confounded else "green"
        console.print(f"[{style}]{escape(controlled_line(confounded or [], factors))}[/{style}]", soft_wrap=True)
    for label, verdict in verdicts(columns):
        lines = verdict_lines(label, verdict)
        style = "green" if verdict["ok"] else "bold red"
        console.print(f"[{style}]{escape(lines[0])}[/{style}]", soft_wrap=True)
        for line in lines[1:]:
            console.print(escape(line), soft_wrap=True)
    if settings:
        print_settings(console, columns, settings)
    table = Table(title="textgen compare", caption=legend(rows, primary))
    table.add_column("group")
    table.add_column("metric")
    for column in columns:
        table.add_column(column.label, justify="right", style="dim" if column.baseline else None)
    previous = None
    for r in rows:
        cells = []
        for i, text in enumerate(r["cells"]):
            if i == r["best"]:
                mark = lead_mark(r)
                text = (
                    f"[bold green]{text} {mark}[/bold green]" if mark == "*" else f"[bold]{escape(text)} {mark}[/bold]"
                )
            cells.append(text)
        table.add_row(r["group"] if r["group"] != previous else "", r["label"], *cells)
        previous = r["group"]
    console.print(table)
    for line in withheld_lines(rows):
        console.print(escape(line), soft_wrap=True)
    for line in effect_lines(list(effects)):
        console.print(escape(line), soft_wrap=True)


def print_settings(console, columns: list[Column], settings: list) -> None:
    """The effective settings, read from the trained models: what differs first."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="settings as trained (from the models and runs)")
    table.add_column("setting")
    table.add_column("kind")
    for column in columns:
        if not column.baseline and column.models:
            table.add_column(column.label, justify="right")
    for s in sorted(settings, key=lambda s: not s.differs):
        style = ("bold red" if s.kind != "family" else "bold") if s.differs else "dim"
        table.add_row(escape(s.name), s.kind, *(f"[{style}]{escape(v)}[/{style}]" for v in s.values))
    console.print(table)


def print_budgets(result: dict[str, Any], stream=None) -> None:
    """--budget: a table per budget (the settings once, with the largest), then the curve."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from textgen_cli.comparison.budgets import curve_rows, difference_heads

    tables = result["budgets"]
    for k, (budget, table) in enumerate(tables):
        Console(file=stream).rule(f"budget: {budget.label}")
        last = k == len(tables) - 1
        print_table(
            table["columns"],
            table["rows"],
            stream,
            settings=table["settings"] if last else [],
            confounded=table["confounded"],
            primary=result["primary"],
            effects=table["pretraining"],
            factors=table["factors"],
        )
    arms, points = result["curve"]
    console = Console(file=stream, width=max(100, 40 + 34 * len(arms)))
    curve = Table(title=f"{result['primary']} across budgets (mean ± std over seeds)")
    for head in ["budget", *arms, *difference_heads(arms, "[95%, two-level bootstrap]")]:
        curve.add_column(head, justify="right")
    for row in curve_rows(arms, points):
        curve.add_row(*(escape(c) for c in row))
    console.print(curve)
    console.print(escape(result["crossover"]), soft_wrap=True)


# --------------------------------------------------------------------------------------------
# The verb


def plan(recipes: Sequence[str], overrides: list[str], seeds: int) -> list[tuple[str, LoadedRecipe, int]]:
    entries = []
    names = set()
    for recipe in recipes:
        base = load_recipe(recipe, overrides)
        if base.name in names:
            raise UserError(f"two recipes named '{base.name}'; give one of them run.name=... to tell them apart")
        names.add(base.name)
        if not any(stage in base.recipe.stages for stage in EVALUATED_STAGES):
            raise UserError(
                f"{base.path}: stages {list(base.recipe.stages)} include neither finetune nor adv-train: nothing to evaluate"
            )
        if not base.recipe.data.finetune.test:
            raise UserError(
                f"{base.path}: key 'data.finetune.test' is empty; compare evaluates every model on the test split"
            )
        for k in range(seeds):
            seed = base.recipe.train.seed + k
            extra = [f"train.seed={seed}", f"run.name={base.name}-seed{seed}"] if seeds > 1 else []
            entries.append((base.name, load_recipe(recipe, [*overrides, *extra]) if extra else base, seed))
    tests = {Path(loaded.recipe.data.finetune.test).resolve() for _, loaded, _ in entries}
    if len(tests) > 1:
        raise UserError(
            "the recipes evaluate on different test files ("
            + ", ".join(map(str, sorted(tests)))
            + "); compare needs the same examples for every model"
        )
    return entries


def models_from_runs(paths: Sequence[str], overrides: list[str]) -> list[Model]:
    """`textgen compare runs/a runs/b`: finished runs only, nothing trained; overrides apply to
    the saved recipes (for evaluation settings such as eval.perturb)."""
    models = []
    for item in paths:
        path = Path(item)
        stage_dirs = (
            [path]
            if (path / SUMMARY_FILE).is_file()
            else [path / s for s in EVALUATED_STAGES if (path / s / SUMMARY_FILE).is_file()]
        )
        if not stage_dirs:
            raise UserError(
                f"'{item}' is not a finished run: expected runs/<name>/<stage>/ with summary.json, or runs/<name>/ holding finetune or adv-train"
            )
        for stage_dir in stage_dirs:
            loaded = load_recipe(str(stage_dir / RECIPE_FILE), overrides)
            # the saved recipe's run name is the run directory's parent name; keep outputs where they are
            loaded = LoadedRecipe(
                dataclasses.replace(
                    loaded.recipe,
                    run=dataclasses.replace(
                        loaded.recipe.run, root=str(stage_dir.parent.parent), name=stage_dir.parent.name
                    ),
                ),
                loaded.path,
                [],
            )
            stage = RunSummary.read(stage_dir / SUMMARY_FILE).stage
            models.append(
                Model(
                    label=f"{stage_dir.parent.name} {stage}", loaded=loaded, stage=stage, seed=loaded.recipe.train.seed
                )
            )
    return models


def run_compare(
    recipes: Sequence[str],
    runs: Sequence[str],
    overrides: list[str],
    seeds: int | None,
    match: str | None,
    name: str | None,
    reports_root: str = "reports",
    primary: str = "bleu",
    factors: Sequence[str] = (),
    budget: str | None = None,
    lr_grid: str | None = None,
) -> dict[str, Any]:
    """`seeds` None: 3 with --budget (the controlled mode), else 1."""
    started = time.perf_counter()
    if recipes and runs:
        raise UserError(
            "give either --recipe (train what is missing) or run directories (compare finished runs), not both"
        )
    seeds = seeds if seeds is not None else (3 if budget else 1)
    if seeds < 1:
        raise UserError(f"--seeds {seeds}: expected a positive number")
    if match not in (None, "flops", "tokens"):
        raise UserError(f"--match {match}: expected flops or tokens")
    if budget and (match or runs):
        raise UserError("--budget states every arm's budget itself: give it with --recipe, without --match")
    from textgen_cli.metrics.registry import INTERVAL_ROWS

    if primary not in INTERVAL_ROWS:
        raise UserError(
            f"--primary {primary}: expected a metric with per-example statistics: {', '.join(INTERVAL_ROWS)}"
        )
    if lr_grid and not recipes:
        raise UserError("--lr-grid trains each recipe at each learning rate: give the recipes with --recipe")
    if lr_grid:  # each arm's pick from the same grid on validation is fair tuning, not a confound
        factors = (*factors, "learning rate")
    if budget:
        return run_budgets(recipes, overrides, seeds, budget, name, reports_root, primary, factors, started, lr_grid)
    reused: dict[tuple[str, str], bool] = {}
    grid: list = []
    if recipes:
        if len(recipes) < 2 and seeds < 2:
            raise UserError("compare needs two or more recipes (or --seeds N with one recipe)")
        entries = plan(recipes, overrides, seeds)
        if lr_grid:
            entries, grid = tuned(entries, lr_grid, primary, lambda loaded: [])
        trained, reused = train_all([loaded for _, loaded, _ in entries], match)
        models = [
            Model(label=f"{base} {stage}" if stage != "finetune" else base, loaded=loaded, stage=stage, seed=seed)
            for (base, _, seed), loaded in zip(entries, trained)
            for stage in EVALUATED_STAGES
            if stage in loaded.recipe.stages
        ]
    else:
        if len(runs) < 2:
            raise UserError("compare needs two or more run directories")
        models = models_from_runs(runs, overrides)
    reference = models[0].loaded
    for model in models:
        model.loaded = common_settings(model.loaded, reference)
        model.reused = {
            stage: reused.get((model.loaded.name, stage), True)
            for stage in STAGES
            if stage in model.loaded.recipe.stages
        }
        collect(model)
        evaluate_model(model)
    table = judged_table(models, primary, factors)
    effects = table["pretraining"]
    folder = report_folder(reports_root, name, models)
    write_report(
        folder,
        table["columns"],
        table["rows"],
        models,
        match,
        seeds,
        effects,
        table["settings"],
        table["confounded"],
        primary,
        table["factors"],
    )
    write_grid_files(folder, grid, primary)
    return {
        "report": str(folder),
        **table,
        "primary": primary,
        "lr_grid": grid,
        "elapsed_s": time.perf_counter() - started,
    }


def tuned(entries: list, lr_grid: str, primary: str, steps_of) -> tuple[list, list]:
    """Each arm's learning rate picked from the same grid on validation (tuning.py), applied to
    every seed of that arm; (entries with the picks, the grid results)."""
    from textgen_cli.comparison.tuning import parse_grid, tune_arm

    grid = parse_grid(lr_grid)
    results = {}
    for base, loaded, _ in entries:
        if base not in results:
            results[base] = tune_arm(base, loaded, grid, primary, steps_of(loaded))
    picked = []
    for base, loaded, seed in entries:
        lr = f"{results[base].chosen:g}"
        section = section_of(list(loaded.recipe.stages)[-1])
        own = [f"{section}.lr={lr}"] if getattr(getattr(loaded.recipe, section), "lr", None) is not None else []
        picked.append((base, with_overrides(loaded, [f"train.lr={lr}", *own]), seed))
    return picked, list(results.values())


def write_grid_files(folder: Path, grid: list, primary: str) -> None:
    if grid:
        from textgen_cli.comparison.tuning import write_grid

        write_grid(folder, grid, primary)


def judged_table(models: list[Model], primary: str, factors: Sequence[str]) -> dict[str, Any]:
    """Columns, the settings as trained, the confounds among them, and the judged rows."""
    from textgen_cli.comparison.settings_diff import confounds, effective_settings

    reference = models[0].loaded.recipe
    columns = build_columns(models)
    settings = effective_settings(columns)
    confounded = confounds(settings, tuple(factors))
    rows = table_rows(columns, reference.eval.bootstrap, reference.eval.seed, primary, confounded)
    # once per table: the terminal and the report files show the same
    effects = pretraining_effects(columns, reference.eval.bootstrap, reference.eval.seed)
    varied = [name for name in factors if any(s.name == name and s.differs for s in settings)]
    return {
        "columns": columns,
        "rows": rows,
        "settings": settings,
        "confounded": confounded,
        "pretraining": effects,
        "factors": varied,  # the declared factors that do differ between the arms
    }


def report_folder(reports_root: str, name: str | None, models: list[Model]) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report_name = name or "-vs-".join(dict.fromkeys(m.loaded.name.split("-seed")[0] for m in models))
    folder = Path(reports_root) / f"{report_name}-{stamp}"
    suffix = 2
    while folder.exists() or folder.with_name(folder.name + ".partial").exists():  # two reports in one second
        folder = Path(reports_root) / f"{report_name}-{stamp}-{suffix}"
        suffix += 1
    return folder


def run_budgets(
    recipes: Sequence[str],
    overrides: list[str],
    seeds: int,
    budget_text: str,
    name: str | None,
    reports_root: str,
    primary: str,
    factors: Sequence[str],
    started: float,
    lr_grid: str | None = None,
) -> dict[str, Any]:
    """--budget: every arm and seed trained to every budget (budgets.py), one judged table per
    budget, the primary metric's curve across budgets and its crossover; the report folder holds
    the largest budget's full report and budgets.md / budgets.json / primary_vs_flops.png."""
    from textgen_cli.comparison.budgets import crossover, curve, parse_budgets, train_at_budgets, write_curve

    budgets = parse_budgets(budget_text)
    if len(recipes) < 2:
        raise UserError("--budget compares two or more recipes (the arms)")
    entries = plan(recipes, overrides, seeds)
    grid: list = []
    if lr_grid:
        from textgen_cli.comparison.budgets import budget_steps, step_cost
        from textgen_cli.core.stages import section_of

        def largest_budget(loaded: LoadedRecipe) -> list[str]:
            stages = list(loaded.recipe.stages)
            costs = {s: step_cost(loaded, s, budgets[-1].unit) for s in stages}
            return [f"{section_of(stages[-1])}.steps={budget_steps(loaded, budgets[-1], costs)}"]

        entries, grid = tuned(entries, lr_grid, primary, largest_budget)
    reference = entries[0][1]
    by_budget: dict[Any, list[Model]] = {b: [] for b in budgets}
    for base, loaded, seed in entries:
        for budget, model in train_at_budgets(base, loaded, seed, budgets, reference):
            by_budget[budget].append(model)
    tables = [(budget, judged_table(models, primary, factors)) for budget, models in by_budget.items()]
    section = reference.recipe.eval
    arms, points = curve(by_budget, primary, section.bootstrap, section.seed)
    line = crossover(arms, points)
    largest, table = tables[-1]
    models = by_budget[largest]
    folder = report_folder(reports_root, name, models)
    write_report(
        folder,
        table["columns"],
        table["rows"],
        models,
        None,
        seeds,
        table["pretraining"],
        table["settings"],
        table["confounded"],
        primary,
        table["factors"],
    )
    curve_record = write_curve(folder, arms, points, primary, line)
    write_grid_files(folder, grid, primary)
    return {
        "report": str(folder),
        **table,
        "lr_grid": grid,
        "budgets": tables,
        "curve": (arms, points),
        "crossover": line,
        "curve_record": curve_record,
        "primary": primary,
        "pretraining": [],
        "elapsed_s": time.perf_counter() - started,
    }
