"""A comparison in the terminal: the side-by-side table, the settings that differ, and the budget curve."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# --------------------------------------------------------------------------------------------
# Training what is missing
from textgen_cli.comparison.collect import (
    references_of,
)
from textgen_cli.comparison.columns import (
    Cell,
    Column,
    controlled_line,
    effect_lines,
    lead_mark,
    legend,
    verdicts,
    withheld_lines,
)
from textgen_cli.metrics.registry import TABLE_ROWS


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
        lead = row_lead(columns, row, higher, references, n_resamples, seed, primary) if higher is not None else None
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
