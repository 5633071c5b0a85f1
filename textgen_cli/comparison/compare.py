"""`textgen compare`: train what is missing, evaluate every model the same way, write one report.

Every model is evaluated on the same test examples with the same metrics and decoding settings (the
first recipe's `eval:` and `generate:` sections). Finished stages whose settings hash matches are
reused, never retrained. `--match flops|tokens` sets each recipe's step counts so that every recipe
gets the first recipe's compute (or token) budget, stage by stage.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from textgen_cli.comparison.collect import (
    build_columns,
    collect,
    evaluate_model,
    pretraining_effects,
)
from textgen_cli.comparison.columns import (
    Model,
)

# --------------------------------------------------------------------------------------------
# Training what is missing
from textgen_cli.comparison.matching import (
    common_settings,
    train_all,
    with_overrides,
)
from textgen_cli.comparison.report import write_report
from textgen_cli.comparison.terminal import table_rows
from textgen_cli.core.errors import UserError
from textgen_cli.core.files import RECIPE_FILE, SUMMARY_FILE
from textgen_cli.core.results import RunSummary
from textgen_cli.core.stages import EVALUATED_STAGES, STAGES, section_of
from textgen_cli.recipe import LoadedRecipe, load_recipe


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
    arm: str | None = None,
) -> dict[str, Any]:
    """`seeds` None: 3 with --budget (the controlled mode), else 1. `arm`: train and evaluate that
    arm only, no report (run_budgets)."""
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
    from textgen_cli.metrics.registry import PRIMARY_ROWS

    if primary not in PRIMARY_ROWS:
        raise UserError(
            f"--primary {primary}: expected a metric with per-example statistics: {', '.join(PRIMARY_ROWS)}"
        )
    if lr_grid and not recipes:
        raise UserError("--lr-grid trains each recipe at each learning rate: give the recipes with --recipe")
    if lr_grid:  # each arm's pick from the same grid on validation is fair tuning, not a confound
        factors = (*factors, "learning rate")
    if arm and not budget:
        raise UserError("--arm trains one arm of a --budget study; give --budget too")
    if budget:
        return run_budgets(
            recipes, overrides, seeds, budget, name, reports_root, primary, factors, started, lr_grid, arm
        )
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
    arm: str | None = None,
) -> dict[str, Any]:
    """--budget: every arm and seed trained to every budget (budgets.py), one judged table per
    budget, the primary metric's curve across budgets and its crossover; the report folder holds
    the largest budget's full report and budgets.md / budgets.json / primary_vs_flops.png.

    With `arm`, only that arm's seeds are trained and evaluated (its grid too) and no report is
    written: one process per arm uses one core or GPU each, and the call without `arm` reuses
    every run and evaluation they made."""
    from textgen_cli.comparison.budgets import crossover, curve, parse_budgets, train_at_budgets, write_curve

    budgets = parse_budgets(budget_text)
    if len(recipes) < 2:
        raise UserError("--budget compares two or more recipes (the arms)")
    entries = plan(recipes, overrides, seeds)
    # every model is evaluated with the first recipe's eval and generate sections, --arm or not
    reference = entries[0][1]
    if arm:
        arms = list(dict.fromkeys(base for base, _, _ in entries))
        if arm not in arms:
            raise UserError(f"--arm {arm}: expected one of the recipes' names: {', '.join(arms)}")
        entries = [entry for entry in entries if entry[0] == arm]
    grid: list = []
    if lr_grid:
        from textgen_cli.comparison.budgets import budget_steps, step_cost
        from textgen_cli.core.stages import section_of

        def largest_budget(loaded: LoadedRecipe) -> list[str]:
            stages = list(loaded.recipe.stages)
            costs = {s: step_cost(loaded, s, budgets[-1].unit) for s in stages}
            return [f"{section_of(stages[-1])}.steps={budget_steps(loaded, budgets[-1], costs)}"]

        entries, grid = tuned(entries, lr_grid, primary, largest_budget)
    by_budget: dict[Any, list[Model]] = {b: [] for b in budgets}
    for base, loaded, seed in entries:
        for budget, model in train_at_budgets(base, loaded, seed, budgets, reference):
            by_budget[budget].append(model)
    if arm:
        return {
            "arm": arm,
            "trained": entries,
            "budgets": budgets,
            "lr_grid": grid,
            "primary": primary,
            "elapsed_s": time.perf_counter() - started,
        }
    tables = [(budget, judged_table(models, primary, factors)) for budget, models in by_budget.items()]
    section = reference.recipe.eval
    arms, points = curve(by_budget, primary, section.bootstrap, section.seed)
    from textgen_cli.metrics.registry import higher_is_better

    line = crossover(arms, points, higher_is_better(primary) is not False)
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
