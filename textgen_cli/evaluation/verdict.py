"""One verdict per evaluated model: is it fit to be ranked at all?

A model is flagged when it
- scores below a trivial baseline on BLEU or chrF (copy-source for pairs; retrieval and
  most-frequent-response for dialogue): the whole paired-bootstrap interval of the difference
  below zero (a gap inside the noise is reported as a tie, not flagged);
- ignores its input: the reference bits per byte barely change when every example gets another
  example's source (gap below `eval.min_input_gap`, or its bootstrap interval over the examples
  reaching zero);
- degenerates: distinct outputs for fewer than `eval.min_distinct_outputs` of the distinct sources,
  or a repeated 4-gram rate more than `eval.max_repetition_excess` above the references' own.

`textgen evaluate` stores the verdict in eval.json and prints it above its table; `textgen compare`
prints one per model above its table and at the top of report.md / report.html.
"""

from __future__ import annotations

from typing import Any

VERDICT_ROWS = {"bleu": "BLEU", "chrf": "chrF"}


def thresholds_of(section) -> dict[str, float]:
    return {
        "min_input_gap": section.min_input_gap,
        "min_distinct_outputs": section.min_distinct_outputs,
        "max_repetition_excess": section.max_repetition_excess,
    }


def judge(report: dict[str, Any], thresholds: dict[str, float]) -> dict[str, Any]:
    """{"ok": bool, "flags": [reasons], "passed": [what was checked and held]} from an eval report."""
    flags: list[str] = []
    passed: list[str] = []
    for baseline in report.get("baselines", []):
        below, ties = [], []
        for row, label in VERDICT_ROWS.items():
            versus = baseline.get("versus", {}).get(row)
            if versus is None:
                continue
            text = f"{label} {versus['diff']:+.2f} [{versus['low']:+.2f}, {versus['high']:+.2f}]"
            if versus["high"] < 0:  # below only when the whole interval is: a gap inside the noise is a tie
                below.append(text)
            elif versus["low"] <= 0:
                ties.append(text)
        if below:
            flags.append(f"below the {baseline['label']} baseline: " + "; ".join(below))
        if ties:
            passed.append(f"ties the {baseline['label']} baseline within the noise: " + "; ".join(ties))
    if report.get("baselines") and not any(f.startswith("below") for f in flags):
        passed.append("not below " + " or ".join(b["label"] for b in report["baselines"]) + " on BLEU and chrF")

    use = report.get("input_use") or {}
    if use.get("gap") is not None:
        bound = f" [95% {use['gap_low']:.3f}, {use['gap_high']:.3f}]" if use.get("gap_low") is not None else ""
        text = f"reference bits per byte {use['bits_per_byte_true']:.3f} with its own sources, {use['bits_per_byte_shuffled']:.3f} with shuffled ones (gap {use['gap']:.3f}{bound}, {use['examples']} examples)"
        if use["gap"] < thresholds["min_input_gap"]:
            flags.append(f"ignores its input: {text}; needs a gap of {thresholds['min_input_gap']:g} or more")
        elif use.get("gap_low") is not None and use["gap_low"] <= 0:  # a gap inside the noise is no evidence
            flags.append(f"may ignore its input: {text}; the gap's interval reaches 0")
        else:
            passed.append(f"uses its input: {text}")

    degeneration = report.get("degeneration") or {}
    share = degeneration.get("distinct_outputs_share")
    if share is not None:
        if share < thresholds["min_distinct_outputs"]:
            flags.append(
                f"degenerate: distinct outputs for only {100 * share:.0f}% of distinct sources (needs {100 * thresholds['min_distinct_outputs']:.0f}%)"
            )
        else:
            passed.append(f"distinct outputs for {100 * share:.0f}% of distinct sources")
    rep, ref_rep = degeneration.get("repeated_4gram_rate"), degeneration.get("reference_repeated_4gram_rate")
    if rep is not None and ref_rep is not None:
        if rep > ref_rep + thresholds["max_repetition_excess"]:
            flags.append(
                f"degenerate: repeats itself ({100 * rep:.0f}% of 4-grams repeat within an output, {100 * ref_rep:.0f}% in the references)"
            )
    return {"ok": not flags, "flags": flags, "passed": passed, "thresholds": dict(thresholds)}


def verdict_lines(label: str, verdict: dict[str, Any]) -> list[str]:
    """Plain-text lines: `LABEL: OK (...)` or `LABEL: FLAGGED` followed by one line per reason."""
    if verdict["ok"]:
        return [f"{label}: OK ({'; '.join(verdict['passed'])})"]
    return [f"{label}: FLAGGED, do not trust its ranking", *(f"  - {flag}" for flag in verdict["flags"])]
