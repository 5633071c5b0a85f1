"""The files of a comparison report: report.md, report.html (self-contained), metrics.csv,
metrics.json and the plots as PNG. Written to a temporary folder and renamed into place."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from textgen_cli import __version__
from textgen_cli.comparison.columns import Column, Model, effect_lines, lead_mark, legend, verdicts
from textgen_cli.core.files import read_metrics, write_text_atomic
from textgen_cli.metrics.registry import ROW_BY_NAME

N_EXAMPLES = 5


def provenance(models: list[Model], match: str | None, seeds: int) -> dict[str, Any]:
    import importlib.metadata as md

    packages = {}
    for name in (
        "torch",
        "transformers",
        "tokenizers",
        "accelerate",
        "datasets",
        "evaluate",
        "sacrebleu",
        "rouge-score",
        "omegaconf",
    ):
        try:
            packages[name] = md.version(name)
        except md.PackageNotFoundError:
            packages[name] = "not installed"
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    signatures = {}
    for model in models:
        signatures.update(model.eval.signatures)
    return {
        "textgen": __version__,
        "git_commit": commit,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": packages,
        "devices": sorted({s.device for m in models for s in m.summaries}),
        "seeds": sorted({m.seed for m in models}),
        "match": match,
        "seeds_per_recipe": seeds,
        "recipes": {
            m.loaded.name: {
                "path": str(m.loaded.path),
                "settings_hash": m.loaded.settings_hash(),
                "overrides": m.loaded.overrides,
            }
            for m in models
        },
        "metric_signatures": signatures,
        "decoding": models[0].eval.decoding,
        "bootstrap": models[0].eval.bootstrap,
        "test_examples": models[0].eval.n_examples,
        "flops_formula": "6 x non-embedding parameters a token passes (encoder or decoder + output layer) x tokens + 12 x hidden x (query x key positions) per layer for attention, at each sequence's actual lengths (encoder self, decoder self, cross)",
    }


def metric_records(columns: list[Column], models: list[Model]) -> list[dict[str, Any]]:
    signatures = {}
    for model in models:
        signatures.update(model.eval.signatures)
    records = []
    for column in columns:
        for row, cell in column.cells.items():
            records.append(
                {
                    "model": column.label,
                    "kind": "baseline" if column.baseline else "model",
                    "metric": row,
                    "group": ROW_BY_NAME[row].group
                    if row in ROW_BY_NAME
                    else ("robustness" if "@" in row else "other"),
                    "value": cell.value,
                    "low": cell.low,
                    "high": cell.high,
                    "std": cell.std,
                    "n_seeds": cell.n,
                    "signature": signatures.get(row.split("@")[0].split(" ")[0], ""),
                }
            )
    return records


def flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(values, dict):
        out: dict[str, Any] = {}
        for key, value in values.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: values}


def recipe_diff(models: list[Model]) -> list[tuple[str, list[str]]]:
    """Resolved settings that differ between the compared recipes."""
    seen: dict[str, dict[str, Any]] = {}
    for model in models:
        seen.setdefault(model.loaded.name, flatten(model.loaded.to_dict()))
    keys = sorted({key for flat in seen.values() for key in flat})
    return [
        (key, [json.dumps(flat.get(key)) for flat in seen.values()])
        for key in keys
        if len({json.dumps(flat.get(key)) for flat in seen.values()}) > 1
    ]


def examples(models: list[Model]) -> list[dict[str, Any]]:
    first = models[0]
    lines = (
        ((first.eval_dir or first.loaded.run_dir(first.stage)) / "predictions.jsonl")
        .read_text(encoding="utf-8")
        .splitlines()[:N_EXAMPLES]
    )
    out = []
    for index, line in enumerate(lines):
        record = json.loads(line)
        source = (
            record["source"]
            if isinstance(record["source"], str)
            else " / ".join(f"{t['role']}: {t['content']}" for t in record["source"][-3:])
        )
        out.append(
            {
                "source": source,
                "reference": record["reference"],
                "outputs": {
                    m.label: (m.predictions[index] if index < len(m.predictions) else "")
                    for m in _one_per_column(models)
                },
            }
        )
    return out


def _one_per_column(models: list[Model]) -> list[Model]:
    chosen: dict[str, Model] = {}
    for model in models:
        chosen.setdefault(model.label, model)
    return list(chosen.values())


def plots(folder: Path, columns: list[Column], models: list[Model]) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    fig_train, ax_train = plt.subplots(figsize=(8, 4.5))
    fig_val, ax_val = plt.subplots(figsize=(8, 4.5))
    fig_bleu, ax_bleu = plt.subplots(figsize=(8, 4.5))
    curves = 0
    for model in _one_per_column(models):
        offset = 0
        for run_dir, summary in zip(model.run_dirs, model.summaries):
            records = read_metrics(run_dir)
            train = [(offset + r["tokens"], r["loss"]) for r in records if "loss" in r]
            val = [(offset + r.get("tokens", 0), r["val_loss"]) for r in records if "val_loss" in r]
            label = f"{model.label}: {summary.stage}"
            if train:
                ax_train.plot(*zip(*train), label=label)
            if val:
                ax_val.plot(*zip(*val), marker="o", markersize=3, label=label)
            bleu = [(offset + r.get("tokens", 0), r["val_bleu"]) for r in records if "val_bleu" in r]
            if bleu:
                ax_bleu.plot(*zip(*bleu), marker="o", markersize=3, label=label)
                curves += 1
            offset += summary.tokens
    for fig, ax, title, ylabel, name in (
        (
            fig_train,
            ax_train,
            "Training loss against tokens (stages one after another)",
            "training loss (nats/token)",
            "loss_vs_tokens.png",
        ),
        (fig_val, ax_val, "Validation loss against tokens", "validation loss (nats/token)", "validation.png"),
        (
            fig_bleu,
            ax_bleu,
            "Learning curve: validation BLEU against tokens (train.eval_generate)",
            "validation BLEU (greedy)",
            "bleu_vs_tokens.png",
        ),
    ):
        ax.set_title(title)
        ax.set_xlabel("training tokens")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax is ax_bleu and not curves:
            ax.text(
                0.5,
                0.5,
                "no val_bleu logged: train with train.eval_generate=N (N > 0)",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
        else:
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        files[name] = folder / name

    rows = [row for row in ("bleu", "chrf", "rougeL") if any(row in c.cells for c in columns)]
    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 4), squeeze=False)
    for ax, row in zip(axes[0], rows):
        labels, values, errors = [], [], [[], []]
        for column in columns:
            cell = column.cells.get(row)
            if cell is None:
                continue
            labels.append(column.label)
            values.append(cell.value)
            if cell.std is not None:
                errors[0].append(cell.std)
                errors[1].append(cell.std)
            elif cell.low is not None:
                errors[0].append(max(0.0, cell.value - cell.low))
                errors[1].append(max(0.0, cell.high - cell.value))
            else:
                errors[0].append(0.0)
                errors[1].append(0.0)
        ax.bar(range(len(values)), values, yerr=errors, capsize=6, color=[f"C{i}" for i in range(len(values))])
        ax.set_xticks(range(len(values)), labels, rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{row} (95% interval or ±1 std)")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "metrics.png", dpi=110)
    plt.close(fig)
    files["metrics.png"] = folder / "metrics.png"
    return files


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


def verdict_markdown(columns: list[Column]) -> list[str]:
    lines = ["## Verdict", ""]
    for label, verdict in verdicts(columns):
        if verdict["ok"]:
            lines.append(f"- **{label}: OK** ({'; '.join(verdict['passed'])})")
        else:
            lines.append(f"- **{label}: FLAGGED, do not trust its ranking**")
            lines += [f"  - {flag}" for flag in verdict["flags"]]
    return [*lines, ""]


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


def runs_used(models: list[Model]) -> list[dict[str, Any]]:
    out = []
    for model in models:
        for run_dir, summary in zip(model.run_dirs, model.summaries):
            out.append(
                {
                    "model": model.label,
                    "stage": summary.stage,
                    "run": str(run_dir),
                    "reused": model.reused.get(summary.stage, True),
                    "steps": summary.steps,
                    "stage_hash": summary.stage_hash,
                }
            )
    return out


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


def write_report(
    folder: Path,
    columns: list[Column],
    rows: list[dict[str, Any]],
    models: list[Model],
    match: str | None,
    seeds: int,
    effects: list[dict[str, Any]],
    settings: list | None = None,
    confounded: list[str] | None = None,
    primary: str | None = None,
    factors: Sequence[str] = (),
) -> None:
    """`effects`: collect.pretraining_effects of the columns (the same the terminal shows);
    `settings` / `confounded`: settings_diff's effective settings and the confounds among them;
    `factors`: the declared factors that differ between the arms."""
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        prov = provenance(models, match, seeds)
        records = metric_records(columns, models)
        judged = [{"model": label, **verdict} for label, verdict in verdicts(columns)]
        write_text_atomic(
            tmp / "metrics.json",
            json.dumps(
                {
                    "metrics": records,
                    "verdicts": judged,
                    "pretraining": effects,
                    "confounded": confounded or [],
                    "declared_factors": list(factors),
                    "primary_metric": primary,
                    "settings": [vars(x) for x in settings or []],
                    "provenance": prov,
                    "runs": runs_used(models),
                },
                indent=2,
            ),
        )
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
        write_text_atomic(tmp / "metrics.csv", table.getvalue())
        images = plots(tmp, columns, models)
        diff = recipe_diff(models)
        samples = examples(models)
        used = runs_used(models)
        names = list(dict.fromkeys(m.loaded.name for m in models))
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
        write_text_atomic(tmp / "report.md", "\n".join(md))

        embedded = {name: base64.b64encode(path.read_bytes()).decode() for name, path in images.items()}
        example_html = "".join(
            f"<h4>{n}. {html.escape(s['source'])}</h4><ul><li><b>reference</b>: {html.escape(s['reference'])}</li>"
            + "".join(
                f"<li><b>{html.escape(label)}</b>: {html.escape(text)}</li>" for label, text in s["outputs"].items()
            )
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
        write_text_atomic(tmp / "report.html", page)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
