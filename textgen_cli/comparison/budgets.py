"""`textgen compare --budget flops=3e12,1e13,3e13`: every arm gets the same stated budgets, and the
curve across them.

The budget is the user's, not the first recipe's: each arm's last stage gets the steps whose cost
is closest to it (FLOPs at the actual sequence lengths, flops.py; or tokens, or examples), so the
order of the `--recipe` flags changes nothing. With a constant learning rate after warmup (the
shipped recipes: `train.min_lr_ratio: 1.0`) the first k steps of a longer run ARE the k-step run,
so each arm and seed is trained once: to the smallest budget, evaluated, then continued to the
next (the resume that is bit-identical to an uninterrupted run, docs/reliability.md), and so on.
A cosine schedule depends on the total, so there each budget is a run of its own.

Each budget's evaluation and the stage summary at that point are kept in
`runs/<name>/budgets/<unit>-<value>/`, beside the stage (which the next budget replaces), and are
reused by a later compare with the same settings.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textgen_cli.core.errors import UserError
from textgen_cli.core.progress import log

UNITS = ("flops", "tokens", "examples")


@dataclass(frozen=True)
class Budget:
    unit: str
    value: float

    @property
    def label(self) -> str:
        return f"{self.unit} {self.value:.3g}"

    @property
    def folder(self) -> str:
        return f"{self.unit}-{self.value:.3g}"


def parse_budgets(text: str) -> list[Budget]:
    """`flops=3e12,1e13` -> the budgets in ascending order."""
    unit, sep, values = text.partition("=")
    unit = unit.strip().lower()
    if not sep or unit not in UNITS:
        raise UserError(f"--budget {text}: expected UNIT=VALUE[,VALUE...] with UNIT one of {', '.join(UNITS)}")
    budgets = []
    for item in values.split(","):
        try:
            value = float(item)
        except ValueError:
            raise UserError(f"--budget {text}: '{item}' is not a number") from None
        if not value > 0:
            raise UserError(f"--budget {text}: every budget must be positive, got {item}")
        budgets.append(Budget(unit, value))
    return sorted(set(budgets), key=lambda b: b.value)


def constant_rate(loaded) -> bool:
    return loaded.recipe.train.min_lr_ratio == 1.0


def step_cost(loaded, stage: str, unit: str) -> float:
    """The budget one optimizer step of `stage` spends."""
    from textgen_cli.comparison import matching

    if unit == "examples":
        return float(loaded.recipe.train.batch_size * loaded.recipe.train.grad_accum)
    return matching.step_cost(loaded, stage, unit)


def budget_steps(loaded, budget: Budget, costs: dict[str, float]) -> int:
    """Steps of the recipe's last stage: what the budget leaves after its earlier stages (each at
    its own steps), at the last stage's cost per step."""
    from textgen_cli.comparison.matching import last_stage_steps
    from textgen_cli.core.stages import section_of

    stages = list(loaded.recipe.stages)
    plan = [(s, costs[s], getattr(loaded.recipe, section_of(s)).steps) for s in stages[:-1]]
    return last_stage_steps(budget.value, [*plan, (stages[-1], costs[stages[-1]], 0)], loaded.name)


# --------------------------------------------------------------------------------------------
# Training and evaluating each arm at each budget


def train_at_budgets(base_name: str, loaded, seed: int, budgets: list[Budget], reference) -> list[tuple[Budget, Any]]:
    """Train one arm (one seed) to every budget in turn, evaluating at each; (budget, Model) pairs."""
    from textgen_cli.comparison.matching import common_settings, stage_done, with_overrides
    from textgen_cli.core.stages import section_of
    from textgen_cli.training import run_stage

    stages = list(loaded.recipe.stages)
    last = stages[-1]
    for stage in stages[:-1]:
        if not stage_done(loaded, stage):
            log(f"compare: training {loaded.name} {stage}")
            run_stage(loaded, stage)
    costs: dict[str, float] = {}
    out = []
    for budget in budgets:
        for stage in stages:
            if stage not in costs:
                costs[stage] = step_cost(loaded, stage, budget.unit)
        steps = budget_steps(loaded, budget, costs)
        name = loaded.name if constant_rate(loaded) else f"{loaded.name}-{budget.folder}"
        at = with_overrides(loaded, [f"{section_of(last)}.steps={steps}", f"run.name={name}", "resume=auto"])
        model = _model(base_name, common_settings(at, reference), last, seed)
        folder = at.run_dir(last).parent / "budgets" / budget.folder
        if not _evaluated(model, folder):
            _train_to(at, last, steps, folder, budget)
            _snapshot_summaries(model, folder)
        _evaluate(model, folder)
        log(f"compare: {base_name} seed {seed} at {budget.label}: {steps} {last} steps")
        out.append((budget, model))
    return out


def _model(label: str, loaded, stage: str, seed: int):
    from textgen_cli.comparison.columns import Model

    return Model(label=label, loaded=loaded, stage=stage, seed=seed)


def _train_to(loaded, stage: str, steps: int, folder: Path, budget: Budget) -> None:
    from textgen_cli.comparison.matching import stage_done, with_overrides
    from textgen_cli.core.files import SUMMARY_FILE
    from textgen_cli.core.results import RunSummary
    from textgen_cli.training import run_stage

    if stage_done(loaded, stage):
        return
    summary_file = loaded.run_dir(stage) / SUMMARY_FILE
    existing = RunSummary.read(summary_file) if summary_file.is_file() else None
    if existing is not None and not _same_but_steps(loaded, stage, existing):
        # the run of this name was made with other settings (another learning rate picked from the
        # grid, say): it is replaced, not continued
        log(f"compare: {loaded.run_dir(stage)} was trained with other settings; training it afresh")
        loaded = with_overrides(loaded, ["resume=never"])
    elif existing is not None and existing.steps > steps:
        raise UserError(
            f"compare --budget: {loaded.run_dir(stage)} was trained past {budget.label} ({steps} steps) and that "
            f"budget's evaluation is not in {folder}; remove {loaded.run_dir(stage).parent} to train it again"
        )
    log(f"compare: training {loaded.name} {stage} to {steps} steps ({budget.label})")
    run_stage(loaded, stage)


def _same_but_steps(loaded, stage: str, summary) -> bool:
    """Whether a finished stage was trained with `loaded`'s settings but for its number of steps."""
    from textgen_cli.comparison.matching import with_overrides
    from textgen_cli.core.stages import section_of

    at_its_steps = with_overrides(loaded, [f"{section_of(stage)}.steps={summary.steps}"])
    return summary.stage_hash == at_its_steps.stage_hash(stage)


def _snapshot_summaries(model, folder: Path) -> None:
    """The stage summaries at this budget, kept beside the evaluation: the stage itself is replaced
    when the next budget continues it."""
    from textgen_cli.comparison.collect import collect
    from textgen_cli.core.files import SUMMARY_FILE

    collect(model)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model.run_dirs[-1] / SUMMARY_FILE, folder / SUMMARY_FILE)


def _evaluated(model, folder: Path) -> bool:
    from textgen_cli.evaluation.eval_files import eval_hash

    try:
        record = json.loads((folder / "eval.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        record.get("eval_hash") == eval_hash(model.loaded, model.stage, "test") and (folder / "summary.json").is_file()
    )


def _evaluate(model, folder: Path) -> None:
    """Evaluate the budget's model into `folder` (or reuse what is there) and load what the report needs."""
    from textgen_cli.comparison.collect import collect, read_predictions
    from textgen_cli.core.files import SUMMARY_FILE
    from textgen_cli.core.results import EvalReport, RunSummary
    from textgen_cli.evaluation.evaluate import run_evaluate
    from textgen_cli.training.model_card import record_evaluation

    if not (folder / "eval.json").is_file() or not _evaluated(model, folder):
        log(f"compare: evaluating {model.label} (seed {model.seed}) in {folder}")
        record_evaluation(run_evaluate(model.loaded, str(model.final_dir), None, "test", [], output=str(folder)))
    else:
        log(f"compare: reusing the evaluation in {folder / 'eval.json'}")
    collect(model)  # the earlier stages; the last one as it was at this budget
    model.summaries[-1] = RunSummary.read(folder / SUMMARY_FILE)
    model.eval = EvalReport.read(folder / "eval.json")
    read_predictions(model, folder)


# --------------------------------------------------------------------------------------------
# The curve across budgets


@dataclass
class BudgetPoint:
    budget: Budget
    arms: dict[str, list[float]]  # arm -> the primary metric per seed
    flops: dict[str, float]  # arm -> mean training FLOPs
    # every other arm -> the first arm minus it: score, low, high (two-level bootstrap)
    diffs: dict[str, dict[str, float]]

    @property
    def diff(self) -> dict[str, float] | None:
        """The first arm minus the second (None with one arm)."""
        return next(iter(self.diffs.values()), None)


def curve(
    by_budget: dict[Budget, list[Any]], primary: str, n_resamples: int, seed: int
) -> tuple[list[str], list[BudgetPoint]]:
    """The primary metric of every arm at every budget, and the first arm's difference from each other."""
    from textgen_cli.comparison.significance import primary_difference, primary_value

    arms = list(dict.fromkeys(m.label for models in by_budget.values() for m in models))
    points = []
    for budget, models in by_budget.items():
        per_arm = {a: [m for m in models if m.label == a] for a in arms}
        values = {
            a: [v for v in (primary_value(m.eval, primary) for m in ms) if v is not None] for a, ms in per_arm.items()
        }
        flops = {a: sum(sum(s.flops for s in m.summaries) for m in ms) / max(len(ms), 1) for a, ms in per_arm.items()}
        first = per_arm[arms[0]]
        diffs = {}
        for other in arms[1:]:
            result = primary_difference(primary, first, per_arm[other], _references(first[0]), n_resamples, seed)
            if result is None:
                raise UserError(
                    f"--primary {primary}: an arm's evaluation has no per-example statistic for it "
                    "(bits_per_byte needs every test reference's NLL in predictions.jsonl: a reference longer than "
                    "the model's context has none; evaluations written before textgen kept them only for the "
                    "examples of eval.input_check: evaluate again)"
                )
            diffs[other] = result["diff"]
        points.append(BudgetPoint(budget, values, flops, diffs))
    return arms, points


def _references(model) -> list[str]:
    path = model.eval_dir / "predictions.jsonl"
    return [json.loads(line)["reference"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def crossover(arms: list[str], points: list[BudgetPoint], higher: bool = True) -> str:
    """Which arm leads where, the crossover between budgets (interpolated in log budget on the mean
    difference), and the budgets where the difference is inside the noise: for the first arm against
    each other arm, one line each (with more than two arms each line names its pair)."""
    if len(arms) < 2 or not points:
        return "no crossover: fewer than two arms"
    one_seed = any(len(seeds) < 2 for p in points for seeds in p.arms.values())
    lines = [pair_crossover(arms[0], other, points, one_seed, higher) for other in arms[1:]]
    if len(lines) == 1:
        return lines[0]
    return "\n".join(f"{arms[0]} against {other}: {line}" for other, line in zip(arms[1:], lines))


def pair_crossover(a: str, b: str, points: list[BudgetPoint], one_seed: bool, higher: bool = True) -> str:
    """`higher`: whether a higher primary metric is better (bits per byte: lower)."""
    import math

    diff = [p.diffs[b] for p in points]

    def leader(d: dict[str, float]) -> str:
        return a if (d["score"] > 0) == higher else b

    # with one seed per arm the interval covers the test examples only: training noise is not measured
    kind = "the test-set noise (one seed per arm: training noise not measured)" if one_seed else "the noise"
    noise = [p.budget.label for p, d in zip(points, diff) if d["low"] <= 0 <= d["high"]]
    noise_text = (
        f"; the difference is inside {kind} at {', '.join(noise)}" if noise else f"; every difference is beyond {kind}"
    )
    for (p, dp), (q, dq) in zip(zip(points, diff), zip(points[1:], diff[1:])):
        if (dp["score"] > 0) != (dq["score"] > 0):
            x0, x1 = math.log(p.budget.value), math.log(q.budget.value)
            y0, y1 = dp["score"], dq["score"]
            at = math.exp(x0 + (x1 - x0) * y0 / (y0 - y1))
            return (
                f"crossover: {leader(dp)} leads below about {p.budget.unit} {at:.2g}, {leader(dq)} above "
                f"(between the budgets {p.budget.value:.3g} and {q.budget.value:.3g}){noise_text}"
            )
    where = "every budget" if len(points) > 1 else points[0].budget.label
    return f"no crossover: {leader(diff[0])} leads at {where}{noise_text}"


def curve_rows(arms: list[str], points: list[BudgetPoint]) -> list[list[str]]:
    """One row per budget: the budget, each arm's mean ± std (and FLOPs), the first arm's difference
    from each other arm."""
    import statistics

    rows = []
    for p in points:
        cells = [p.budget.label]
        for arm in arms:
            xs = p.arms[arm]
            spread = f" ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else ""
            cells.append(f"{statistics.fmean(xs):.2f}{spread} (n={len(xs)}, {p.flops[arm]:.3g} FLOPs)")
        for d in p.diffs.values():
            cells.append(f"{d['score']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]")
        rows.append(cells)
    return rows


def plot_curve(path: Path, arms: list[str], points: list[BudgetPoint], primary: str) -> None:
    """The primary metric against training FLOPs: one line per arm (mean over seeds), a band from the
    lowest to the highest seed, and every seed as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm in arms:
        xs = [p.flops[arm] for p in points]
        means = [sum(p.arms[arm]) / len(p.arms[arm]) for p in points]
        line = ax.plot(xs, means, marker="o", label=arm)[0]
        ax.fill_between(
            xs,
            [min(p.arms[arm]) for p in points],
            [max(p.arms[arm]) for p in points],
            alpha=0.2,
            color=line.get_color(),
        )
        for x, p in zip(xs, points):
            ax.scatter([x] * len(p.arms[arm]), p.arms[arm], s=10, color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel(f"{primary} (test)")
    ax.set_title(f"{primary} against training compute (band: lowest to highest seed)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_curve(folder: Path, arms: list[str], points: list[BudgetPoint], primary: str, line: str) -> dict[str, Any]:
    """budgets.json, budgets.md and primary_vs_flops.png in the report folder."""
    from textgen_cli.core.files import write_text_atomic

    plot_curve(folder / "primary_vs_flops.png", arms, points, primary)
    record = {
        "primary_metric": primary,
        "arms": arms,
        "crossover": line,
        "budgets": [
            {
                "budget": dataclasses.asdict(p.budget),
                "per_seed": p.arms,
                "flops": p.flops,
                "difference": p.diff,  # the first arm minus the second
                "differences": p.diffs,  # the first arm minus each other arm
            }
            for p in points
        ],
    }
    write_text_atomic(folder / "budgets.json", json.dumps(record, indent=2))
    head = ["budget", *arms, *difference_heads(arms, "(two-level bootstrap)")]
    md = [
        f"# {primary} across budgets",
        "",
        line.replace("\n", "\n\n"),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    md += ["| " + " | ".join(row) + " |" for row in curve_rows(arms, points)]
    md += ["", "![primary metric against training FLOPs](primary_vs_flops.png)", ""]
    write_text_atomic(folder / "budgets.md", "\n".join(md))
    largest = f"The tables below are the largest budget's ({points[-1].budget.label})."
    report = folder / "report.md"
    if report.is_file():  # the answer across budgets first, then the largest budget's full report
        lines = report.read_text(encoding="utf-8").splitlines()
        block = ["## Across budgets", "", *md[2:], largest, ""]
        write_text_atomic(report, "\n".join([*lines[:2], *block, *lines[2:]]) + "\n")
    page = folder / "report.html"
    if page.is_file():
        text = page.read_text(encoding="utf-8")
        at = text.index("</h1>") + len("</h1>")
        write_text_atomic(page, text[:at] + curve_html(folder, head, arms, points, line, largest) + text[at:])
    return record


def difference_heads(arms: list[str], test: str) -> list[str]:
    return [f"{arms[0]} - {other} {test}" for other in arms[1:]]


def curve_html(folder: Path, head: list[str], arms: list[str], points: list[BudgetPoint], line: str, note: str) -> str:
    import base64
    import html

    image = base64.b64encode((folder / "primary_vs_flops.png").read_bytes()).decode("ascii")
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in curve_rows(arms, points)
    )
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return (
        f"\n<h2>Across budgets</h2><p>{html.escape(line)}</p><table><tr>{header}</tr>{cells}</table>"
        f'<img alt="primary metric against training FLOPs" src="data:image/png;base64,{image}"><p>{html.escape(note)}</p>\n'
    )
