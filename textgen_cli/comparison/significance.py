"""Which model leads a row of the comparison table, and whether that lead may be called a win.

One legend for every table (comparison.lead_mark):
- `*`: the lead is significant at 95% by a test that covers training AND test-set noise: the
  two-level bootstrap (metrics.two_level_bootstrap: resample each arm's seeds, then the shared test
  examples), with at least two seeds per arm, Holm-corrected on every row but the primary metric;
- `n.s.`: tested that way, inside the noise;
- `†`: no claim. Either nothing tested it (a row with no per-example statistic: losses, costs,
  diversity), or a star is withheld: one seed per arm (the test covers the test examples, not
  training), a flagged model (its verdict says not to trust its ranking), or confounded arms (they
  differ in more than the family and the declared factor: docs/compare.md).

Baseline columns are never ranked. The why of each row is in its `test` text, printed under the
table and kept in metrics.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from textgen_cli.metrics.registry import INTERVAL_ROWS

if TYPE_CHECKING:
    from textgen_cli.comparison.columns import Column

UNTESTED = "untested"


@dataclass
class Lead:
    best: int | None  # column index of the best model, None when tied or alone
    tested: bool
    significant: bool
    test: str  # how it was tested, or why it was not
    p: float | None = None
    diff: dict[str, float] | None = None  # best minus runner-up: score, low, high


def ranked_pair(columns: list[Column], row: str, higher: bool) -> tuple[int, int] | None:
    """(best, runner-up) column indices among the models (never the baselines), or None."""
    present = [(i, c.cells[row].value) for i, c in enumerate(columns) if row in c.cells and not c.baseline]
    if len(present) < 2:
        return None
    ranked = sorted(present, key=lambda item: item[1], reverse=higher)
    if ranked[0][1] == ranked[1][1]:
        return None
    return ranked[0][0], ranked[1][0]


def row_lead(
    columns: list[Column],
    row: str,
    higher: bool,
    references: list[str],
    n_resamples: int,
    seed: int,
    primary: str | None = None,
) -> Lead:
    """The best model of a row and the two-level bootstrap of its lead over the runner-up (rows with
    per-example statistics only: BLEU, chrF, ROUGE, exact match)."""
    pair = ranked_pair(columns, row, higher)
    if pair is None:
        present = [i for i, c in enumerate(columns) if row in c.cells and not c.baseline]
        return Lead(present[0] if len(present) == 1 else None, False, False, UNTESTED)
    best, second = pair
    arms = [columns[best].models, columns[second].models]
    # bits per byte is tested only as the primary metric: as a secondary row it would add a
    # hypothesis to every table's Holm correction
    tested = row in INTERVAL_ROWS or row == primary
    result = primary_difference(row, arms[0], arms[1], references, n_resamples, seed) if tested else None
    if result is None:
        return Lead(best, False, False, UNTESTED)
    d = result["diff"]
    apart = d["low"] > 0 or d["high"] < 0
    seeds = f"{len(arms[0])} and {len(arms[1])} seeds"
    return Lead(best, True, apart, f"two-level bootstrap: {seeds}, {len(references)} examples", result["p"], d)


def primary_difference(
    row: str, arm_a: list, arm_b: list, references: list[str], n_resamples: int, seed: int
) -> dict[str, Any] | None:
    """The two-level bootstrap of arm A minus arm B on `row` (metrics.two_level_bootstrap), or None
    when the row has no per-example statistic in every model: the text metrics resample the
    generated outputs, bits per byte each reference's NLL and bytes (a ratio of sums)."""
    models = [*arm_a, *arm_b]
    if row in INTERVAL_ROWS and all(m.predictions and len(m.predictions) == len(references) for m in models):
        from textgen_cli.metrics import two_level_bootstrap

        return two_level_bootstrap(
            row, [m.predictions for m in arm_a], [m.predictions for m in arm_b], references, n_resamples, seed
        )
    if row == "bits_per_byte" and all(
        m.reference_scores and len(m.reference_scores) == len(references) for m in models
    ):
        from textgen_cli.metrics import two_level_bits_per_byte

        def unzipped(arm):
            return [([nll for nll, _ in m.reference_scores], [b for _, b in m.reference_scores]) for m in arm]

        return two_level_bits_per_byte(unzipped(arm_a), unzipped(arm_b), n_resamples, seed)
    return None


def primary_value(report, row: str) -> float | None:
    """A row's value in an evaluation (an EvalReport or its eval.json dict): the text metrics are in
    `metrics`, bits per byte in `likelihood`."""
    metrics = report["metrics"] if isinstance(report, dict) else report.metrics
    likelihood = (report.get("likelihood") if isinstance(report, dict) else report.likelihood) or {}
    value = metrics.get(row, likelihood.get(row))
    return None if value is None else float(value)


def withheld_reason(columns: list[Column], best: int, confounded: list[str]) -> str | None:
    """Why a tested, significant lead still gets no star (None: it gets one)."""
    if confounded:
        return "confounded: " + "; ".join(confounded)
    if any(
        m.eval is not None and m.eval.verdict is not None and not m.eval.verdict["ok"] for m in columns[best].models
    ):
        return "the leading model is flagged (see its verdict)"
    models = [c for c in columns if not c.baseline]
    if min(len(c.models) for c in models) < 2:
        return "one seed per arm: the interval covers the test examples, not training"
    return None


def decide(rows: list[dict[str, Any]], columns: list[Column], primary: str, confounded: list[str]) -> None:
    """Holm over the secondary tested rows, then the rules that withhold a star; sets each row's
    `significant`, `withheld` and `test` in place."""
    from textgen_cli.metrics import holm

    secondary = {r["row"]: r["p"] for r in rows if r["tested"] and r["row"] != primary}
    rejected = holm(secondary)
    for r in rows:
        if not r["tested"]:
            continue
        if r["row"] != primary:
            r["significant"] = rejected[r["row"]]
            r["test"] += f", Holm over {len(secondary)} secondary rows"
        else:
            r["test"] += ", primary metric"
        reason = withheld_reason(columns, r["best"], confounded) if r["significant"] else None
        if reason:
            r["significant"], r["withheld"] = False, reason
