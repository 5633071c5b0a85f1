"""report.html: the same as report.md in one self-contained page, the plots embedded."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textgen_cli.comparison.columns import Column, effect_lines, lead_mark, legend, verdicts

if TYPE_CHECKING:
    from textgen_cli.comparison.report import ReportContent


def html_table(columns: list[Column], rows: list[dict[str, Any]]) -> str:
    head = (
        "<tr><th>group</th><th>metric</th>"
        + "".join(f"<th{' class=baseline' if c.baseline else ''}>{html.escape(c.label)}</th>" for c in columns)
        + "</tr>"
    )
    body = []
    for r in rows:
        cells = []
        for i, text in enumerate(r["cells"]):
            mark = lead_mark(r) if i == r["best"] else ""
            cls = (
                ' class="best"'
                if mark == "*"
                else (' class="best ns"' if mark else (' class="baseline"' if columns[i].baseline else ""))
            )
            suffix = "" if not mark else (" *" if mark == "*" else f" <small>({html.escape(mark)})</small>")
            cells.append(f"<td{cls}>{html.escape(text)}{suffix}</td>")
        body.append(f"<tr><td>{html.escape(r['group'])}</td><td>{html.escape(r['label'])}</td>{''.join(cells)}</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def verdict_html(columns: list[Column]) -> str:
    items = []
    for label, verdict in verdicts(columns):
        if verdict["ok"]:
            items.append(
                f'<li class="ok"><b>{html.escape(label)}: OK</b> ({html.escape("; ".join(verdict["passed"]))})</li>'
            )
        else:
            reasons = "".join(f"<li>{html.escape(flag)}</li>" for flag in verdict["flags"])
            items.append(
                f'<li class="flagged"><b>{html.escape(label)}: FLAGGED, do not trust its ranking</b><ul>{reasons}</ul></li>'
            )
    return f"<h2>Verdict</h2><ul>{''.join(items)}</ul>"


def controlled_html(settings: list | None, confounded: list[str] | None) -> str:
    if confounded:
        return f'<p class="confounded"><b>CONFOUNDED</b>: the arms differ in more than the family: {html.escape("; ".join(confounded))}. No lead is starred.</p>'
    return "<p>Controlled: the arms differ only in the family (settings below).</p>" if settings else ""


def settings_html(columns: list[Column], settings: list | None) -> str:
    if not settings:
        return ""
    arms = [c.label for c in columns if not c.baseline and c.models]
    head = "<tr><th>setting</th><th>kind</th>" + "".join(f"<th>{html.escape(a)}</th>" for a in arms) + "</tr>"
    body = "".join(
        f"<tr><td>{'<b>' if x.differs else ''}{html.escape(x.name)}{'</b>' if x.differs else ''}</td><td>{x.kind}</td>"
        + "".join(f"<td>{html.escape(v)}</td>" for v in x.values)
        + "</tr>"
        for x in sorted(settings, key=lambda x: not x.differs)
    )
    return f"<h2>Settings as trained</h2><table>{head}{body}</table>"


def report_html(content: ReportContent, images: dict[str, Path]) -> str:
    """report.html: self-contained, the plots embedded."""
    columns, rows, settings, confounded, primary = (
        content.columns,
        content.rows,
        content.settings,
        content.confounded,
        content.primary,
    )
    effects, prov, used, samples, diff, names = (
        content.effects,
        content.prov,
        content.used,
        content.samples,
        content.diff,
        content.names,
    )
    embedded = {name: base64.b64encode(path.read_bytes()).decode() for name, path in images.items()}
    example_html = "".join(
        f"<h4>{n}. {html.escape(s['source'])}</h4><ul><li><b>reference</b>: {html.escape(s['reference'])}</li>"
        + "".join(f"<li><b>{html.escape(label)}</b>: {html.escape(text)}</li>" for label, text in s["outputs"].items())
        + "</ul>"
        for n, s in enumerate(samples, 1)
    )
    diff_html = (
        "<table><tr><th>key</th>"
        + "".join(f"<th>{html.escape(n)}</th>" for n in names)
        + "</tr>"
        + "".join(
            f"<tr><td><code>{html.escape(key)}</code></td>"
            + "".join(f"<td>{html.escape(v)}</td>" for v in values)
            + "</tr>"
            for key, values in diff
        )
        + "</table>"
    )
    runs_html = (
        "<table><tr><th>model</th><th>stage</th><th>run</th><th>reused</th><th>steps</th></tr>"
        + "".join(
            f"<tr><td>{html.escape(u['model'])}</td><td>{u['stage']}</td><td><code>{html.escape(u['run'])}</code></td><td>{'yes' if u['reused'] else 'trained now'}</td><td>{u['steps']}</td></tr>"
            for u in used
        )
        + "</table>"
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>textgen compare: {html.escape(" vs ".join(c.label for c in columns))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
td:first-child, td:nth-child(2), th {{ text-align: left; }} td.best {{ background: #e3f6e3; font-weight: bold; }} td.ns {{ background: #f4f4f4; }}
td.baseline, th.baseline {{ color: #666; font-style: italic; }} li.flagged {{ color: #a00; }} li.ok {{ color: #060; }} li.flagged li {{ color: #222; }} p.confounded {{ color: #a00; }}
img {{ max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }} pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
</style></head><body>
<h1>textgen compare</h1>
{controlled_html(settings, confounded)}
{verdict_html(columns)}
{("<h2>Does pretraining help?</h2><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in effect_lines(effects)) + "</ul>") if effects else ""}
<p>{html.escape(" vs ".join(c.label for c in columns if not c.baseline))} on {prov["test_examples"]} test examples, the same metrics and decoding settings for every model.
Best model in each row highlighted; grey: the lead over the runner-up is not significant (n.s.) or untested.</p>
<h2>Results</h2>{html_table(columns, rows)}
<p><small>{html.escape(legend(rows, primary))}</small></p>
{settings_html(columns, settings)}
<h2>Plots</h2>
<img alt="training loss against tokens" src="data:image/png;base64,{embedded["loss_vs_tokens.png"]}">
<img alt="validation loss against tokens" src="data:image/png;base64,{embedded["validation.png"]}">
<img alt="validation BLEU against tokens" src="data:image/png;base64,{embedded["bleu_vs_tokens.png"]}">
<img alt="metrics with intervals" src="data:image/png;base64,{embedded["metrics.png"]}">
<h2>Runs used</h2>{runs_html}
<h2>Settings that differ</h2>{diff_html}
<h2>Example outputs</h2>{example_html}
<h2>Provenance</h2><pre>{html.escape(json.dumps(prov, indent=2))}</pre>
</body></html>
"""
    return page
