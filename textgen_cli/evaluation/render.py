"""An evaluation in the terminal: the table of rows with intervals and baselines, and the verdict."""

from __future__ import annotations

from typing import Any

from textgen_cli.core.results import EvalReport
from textgen_cli.metrics.registry import higher_is_better


def diff_cell(row: str, diff: dict[str, Any] | None, value: float, base: float | None) -> str:
    """Model minus baseline: green when significantly better, red when significantly worse, `n.s.`
    inside the interval; without an interval the plain difference, marked untested."""
    better = higher_is_better(row) is not False
    if diff is not None:
        worse = (diff["high"] < 0) if better else (diff["low"] > 0)
        significant = diff["low"] > 0 or diff["high"] < 0
        style = "red" if worse else ("green" if significant else "")
        text = f"{diff['diff']:+.2f} [{diff['low']:+.2f}, {diff['high']:+.2f}]"
        return f"[{style}]{text}[/{style}]" if style else f"{text} n.s."
    if base is not None:
        return f"{value - base:+.4g} (untested)"
    return ""


def print_verdict(report: EvalReport, console) -> None:
    from rich.markup import escape

    from textgen_cli.evaluation.verdict import verdict_lines

    verdict = report.verdict
    if verdict is None:
        return
    lines = verdict_lines(f"verdict for {report.recipe_name} {report.stage or 'model'}", verdict)
    style = "green" if verdict["ok"] else "bold red"
    console.print(f"[{style}]{escape(lines[0])}[/{style}]", soft_wrap=True)
    for line in lines[1:]:
        console.print(escape(line), soft_wrap=True)


def print_table(report: EvalReport, stream=None) -> None:
    """The terminal view: the verdict, then the model against every baseline with intervals."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=stream, width=140)
    print_verdict(report, console)
    baselines = report.baselines or [{"label": report.baseline["name"], **report.baseline}]
    table = Table(
        title=f"{report.recipe_name} · {report.stage or 'model'} · {report.split} split · {report.n_examples} examples",
        caption="model - baseline: paired bootstrap 95% interval; green/red: significantly better/worse; n.s.: inside the interval; untested: no interval",
    )
    table.add_column("metric")
    table.add_column("model", justify="right")
    table.add_column("95% interval", justify="right")
    for baseline in baselines:
        table.add_column(baseline["label"][:30], justify="right")
        table.add_column(f"model - {baseline['label'][:22]} [95%]", justify="right")
    for row, value in report.metrics.items():
        bound = report.intervals.get(row)
        cells = [row, f"{value:.4g}", f"[{bound['low']:.4g}, {bound['high']:.4g}]" if bound else ""]
        for baseline in baselines:
            base = baseline["metrics"].get(row)
            cells += [
                f"{base:.4g}" if base is not None else "",
                diff_cell(row, baseline["versus"].get(row), value, base),
            ]
        table.add_row(*cells)
    blank = [""] * (2 * len(baselines))
    lik = report.likelihood
    if lik["bits_per_byte"] is not None:
        skipped = (
            f"{lik['skipped_too_long']} references longer than the context left out" if lik["skipped_too_long"] else ""
        )
        table.add_row("bits per byte", f"{lik['bits_per_byte']:.4f}", skipped, *blank)
        table.add_row("perplexity", f"{lik['perplexity']:.2f}", "", *blank)
    use = report.input_use or {}
    if use.get("gap") is not None:
        table.add_row(f"bits per byte, own sources ({use['examples']})", f"{use['bits_per_byte_true']:.4f}", "", *blank)
        table.add_row(
            f"bits per byte, shuffled sources ({use['examples']})", f"{use['bits_per_byte_shuffled']:.4f}", "", *blank
        )
        bound = f"[{use['gap_low']:+.4f}, {use['gap_high']:+.4f}]" if use.get("gap_low") is not None else ""
        table.add_row("input-use gap (shuffled - own)", f"{use['gap']:+.4f}", bound, *blank)
    degenerate = report.degeneration or {}
    if degenerate:
        table.add_row(
            "distinct outputs / distinct sources",
            f"{degenerate['distinct_outputs_share']:.3f}",
            f"{degenerate['distinct_outputs']} / {degenerate['distinct_sources']}",
            *blank,
        )
        table.add_row(
            "repeated 4-gram rate",
            f"{degenerate['repeated_4gram_rate']:.3f}",
            f"references {degenerate['reference_repeated_4gram_rate']:.3f}",
            *blank,
        )
    prose = report.prose
    if "bits_per_byte" in prose:
        table.add_row(
            "prose bits per byte",
            f"{prose['bits_per_byte']:.4f}",
            f"window {prose['window']}, stride {prose['stride']}",
            *blank,
        )
    console.print(table)
    for r in report.robustness:
        parts = ", ".join(
            f"{row} {report.metrics[row]:.4g} -> {r['metrics'][row]:.4g} ({-r['drop'][row]:+.4g}, {-100 * r['relative_drop'][row]:+.1f}%)"
            for row in ("bleu", "chrf", "rougeL")
            if row in r["metrics"]
        )
        console.print(f"robustness {r['perturbation']}: {parts}")
    gen = report.generation
    console.print(
        f"generated {gen['new_tokens']:,} tokens at {gen['tokens_per_s']:,.0f} tokens/s; evaluation took {report.eval_time_s:.1f} s "
        f"({report.examples_per_s:.1f} examples/s)"
    )
    console.print(
        f"evaluation written to {report.files['eval']} (predictions: {report.files['predictions']})", soft_wrap=True
    )
