"""report.md: the verdicts, the table with its legend, the settings as trained, the runs used and
example outputs."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from textgen_cli.comparison.columns import Column, effect_lines, lead_mark, legend, verdicts

if TYPE_CHECKING:
    from textgen_cli.comparison.report import ReportContent


def markdown_table(columns: list[Column], rows: list[dict[str, Any]]) -> str:
    lines = ["| group | metric | " + " | ".join(c.label for c in columns) + " |", "|---|---|" + "---:|" * len(columns)]
    for r in rows:
        cells = []
        for i, text in enumerate(r["cells"]):
            if i == r["best"]:
                mark = lead_mark(r)
                text = f"**{text}** {mark}" if mark == "*" else f"**{text}** ({mark})"
            cells.append(text)
        lines.append(f"| {r['group']} | {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict_markdown(columns: list[Column]) -> list[str]:
    lines = ["## Verdict", ""]
    for label, verdict in verdicts(columns):
        if verdict["ok"]:
            lines.append(f"- **{label}: OK** ({'; '.join(verdict['passed'])})")
        else:
            lines.append(f"- **{label}: FLAGGED, do not trust its ranking**")
            lines += [f"  - {flag}" for flag in verdict["flags"]]
    return [*lines, ""]


def report_markdown(content: ReportContent) -> str:
    """report.md."""
    columns, rows, settings, confounded, primary, factors = (
        content.columns,
        content.rows,
        content.settings,
        content.confounded,
        content.primary,
        content.factors,
    )
    effects, prov, used, samples, diff, names = (
        content.effects,
        content.prov,
        content.used,
        content.samples,
        content.diff,
        content.names,
    )
    models_only = [c for c in columns if not c.baseline]
    effects_md = (
        ["## Does pretraining help?", "", *(f"- {line}" for line in effect_lines(effects)), ""] if effects else []
    )
    from textgen_cli.comparison.columns import controlled_line, withheld_lines

    line = controlled_line(confounded or [], factors)
    controlled = [f"**{line[: line.index(':')]}**{line[line.index(':') :]}", ""] if settings or confounded else []
    md = [
        f"# textgen compare: {' vs '.join(c.label for c in models_only)}",
        "",
        *controlled,
        *verdict_markdown(columns),
        *effects_md,
        "## Results",
        "",
        markdown_table(columns, rows),
        "",
    ]
    md += [
        f"**bold**: best model in row. {legend(rows, primary)}. Cells: one seed's value [95% bootstrap interval over the test examples], or the mean ± std over seeds.",
        "",
        *(f"- {line}" for line in withheld_lines(rows)),
        "",
    ]
    md += [
        "## Plots",
        "",
        "![training loss](loss_vs_tokens.png)",
        "",
        "![validation loss](validation.png)",
        "",
        "![validation BLEU against training tokens](bleu_vs_tokens.png)",
        "",
        "![metrics](metrics.png)",
        "",
    ]
    md += ["## Runs used", "", "| model | stage | run | reused | steps |", "|---|---|---|---|---:|"]
    md += [
        f"| {u['model']} | {u['stage']} | `{u['run']}` | {'yes' if u['reused'] else 'trained now'} | {u['steps']} |"
        for u in used
    ]
    arms = [c.label for c in models_only]
    md += ["", "## Settings as trained (from the models and runs)", ""]
    md += ["| setting | kind | " + " | ".join(arms) + " |", "|---|---|" + "---|" * len(arms)]
    md += [
        f"| {'**' + x.name + '**' if x.differs else x.name} | {x.kind} | " + " | ".join(x.values) + " |"
        for x in sorted(settings or [], key=lambda x: not x.differs)
    ]
    md += [
        "",
        "## Recipe keys that differ",
        "",
        "| key | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    md += [f"| `{key}` | " + " | ".join(v.replace("|", "\\|") for v in values) + " |" for key, values in diff]
    md += ["", "## Example outputs (first test examples)", ""]
    for n, sample in enumerate(samples, 1):
        md += [f"**{n}. source:** {sample['source']}", "", f"- reference: {sample['reference']}"]
        md += [f"- {label}: {text}" for label, text in sample["outputs"].items()]
        md += [""]
    md += ["## Provenance", "", "```json", json.dumps(prov, indent=2), "```", ""]
    return "\n".join(md)
