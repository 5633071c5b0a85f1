"""The model card: `final/README.md`, what HF Trainer and TRL write beside a model.

A YAML metadata header the Hub reads (library, pipeline, tags, base model, datasets), then the
family and architecture, the checkpoint it started from, the data, the training figures, the
evaluation table when the stage was evaluated, and the resolved recipe, so that `final/` can be
pushed to a hub as it is. Written when `final/` is written, and again whenever the final model is
evaluated on the test split (`record_evaluation`: after the stage, by `evaluate` or by `compare`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from textgen_cli import __version__
from textgen_cli.core.files import FINAL_DIR, RECIPE_FILE, SUMMARY_FILE, write_text_atomic
from textgen_cli.core.stages import STAGE_TABLE
from textgen_cli.models.roles import role_for

if TYPE_CHECKING:
    from textgen_cli.core.results import EvalReport, RunSummary

CARD_FILE = "README.md"
HUB_DATASET = "hf:"  # data paths naming a hub dataset (data/readers.py)
# a checkpoint inside the HF cache names its hub model: .../models--ORG--NAME/snapshots/<sha>
CACHED_MODEL = re.compile(r"models--([^/]+?)--([^/]+)/snapshots/[^/]+/?$")


def write_model_card(run_path: Path, summary: RunSummary, eval_report: EvalReport | None = None) -> Path:
    """Write `<run_path>/final/README.md` from the stage's summary, its recipe.yaml and, when the
    stage was evaluated, the evaluation report; returns the card's path."""
    recipe = yaml.safe_load((run_path / RECIPE_FILE).read_text(encoding="utf-8"))
    card = run_path / FINAL_DIR / CARD_FILE
    write_text_atomic(card, render(recipe, summary, eval_report, saved_layout(run_path / FINAL_DIR)))
    return card


def record_evaluation(report: EvalReport) -> Path | None:
    """Rewrite a run's card with an evaluation of its final model on the test split, whichever verb
    ran it (the evaluation after a stage, `evaluate`, `compare`); None when the model evaluated is
    not a textgen run's final/, or the evaluation is not the card's (another split, perturbed inputs)."""
    from textgen_cli.core.results import RunSummary

    final = Path(report.model)
    run_path = final.parent
    if final.name != FINAL_DIR or report.split != "test" or report.robustness:
        return None
    if not (run_path / SUMMARY_FILE).is_file() or not (run_path / RECIPE_FILE).is_file():
        return None
    return write_model_card(run_path, RunSummary.read(run_path / SUMMARY_FILE), report)


def saved_layout(final: Path) -> tuple[str | None, str | None]:
    """(model_type, model class) of the saved model, from its config.json: the layout it really
    has, whichever `model.arch` or checkpoint it came from."""
    try:
        config = json.loads((final / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None
    return config.get("model_type"), (config.get("architectures") or [None])[0]


def base_checkpoint(recipe: dict[str, Any], init_from: str | None) -> str | None:
    """The checkpoint the stage started from (a pretrain from scratch has none)."""
    return init_from or recipe["model"].get("init_from")


def hub_model_id(path: str | None) -> str | None:
    """The hub id of a checkpoint that lies in the HF cache. A plain local directory has none: like
    HF Trainer, the card then names it in the text only, since `base_model` must be a hub id."""
    match = CACHED_MODEL.search(path or "")
    return f"{match.group(1)}/{match.group(2)}" if match else None


def stage_data(recipe: dict[str, Any], stage: str) -> dict[str, str]:
    """The stage's data splits (split -> path or hf:NAME)."""
    section = recipe["data"][STAGE_TABLE[stage].data]
    return {split: section[split] for split in ("train", "validation", "test") if section.get(split)}


def hub_datasets(data: dict[str, str]) -> list[str]:
    """The hub ids (ORG/NAME) among `hf:ORG/NAME[/CONFIG][:SPLIT]` data values; local folders are none."""
    names = [value[len(HUB_DATASET) :].partition(":")[0] for value in data.values() if value.startswith(HUB_DATASET)]
    return sorted({"/".join(name.split("/")[:2]) for name in names if not name.startswith(("/", ".", "~"))})


def metadata(
    recipe: dict[str, Any], stage: str, init_from: str | None, model_type: str | None = None
) -> dict[str, Any]:
    family = recipe["model"]["family"]
    role = role_for(family)
    meta: dict[str, Any] = {
        "library_name": "transformers",
        "pipeline_tag": role.pipeline_tag,
        "tags": ["textgen", family, model_type or role.default_arch, stage],
    }
    base = hub_model_id(base_checkpoint(recipe, init_from))
    if base:
        meta["base_model"] = base
    datasets = hub_datasets(stage_data(recipe, stage))
    if datasets:
        meta["datasets"] = datasets
    return meta


def render(
    recipe: dict[str, Any],
    summary: RunSummary,
    eval_report: EvalReport | None,
    layout: tuple[str | None, str | None] = (None, None),
) -> str:
    family, stage, model = recipe["model"]["family"], summary.stage, recipe["model"]
    role = role_for(family)
    model_type, model_class = layout
    described = f"{role.kind} Transformer ({model_type or role.default_arch} layout" + (
        f", `{model_class}`)" if model_class else ")"
    )
    base = base_checkpoint(recipe, summary.init_from)
    lines = [
        "---",
        yaml.safe_dump(metadata(recipe, stage, summary.init_from, model_type), sort_keys=False).rstrip(),
        "---",
        "",
        f"# {summary.recipe_name} · {stage}",
        "",
        f"A `{family}` text generator trained with [textgen](https://pypi.org/project/textgen-cli/) {__version__} "
        f"(stage `{stage}` of recipe `{summary.recipe_name}`).",
        "",
        "## Model",
        "",
        f"- family: `{family}`: {described}",
        f"- {summary.parameters:,} parameters: {model['layers']} layer{'s' if model['layers'] != 1 else ''}{' (encoder and decoder each)' if role.kind == 'encoder-decoder' else ''}, "
        f"hidden size {model['hidden']}, {model['heads']} heads, feed-forward {model['ffn']}, context {model['context']} tokens",
        f"- started from: {f'`{base}`' if base else 'random weights (trained from scratch)'}",
        "",
        "## Data",
        "",
        *[f"- {split}: `{where}`" for split, where in stage_data(recipe, stage).items()],
        f"- {summary.train_examples:,} training examples" + (f", task `{summary.task}`" if summary.task else ""),
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        f"| steps | {summary.steps:,} of {summary.global_batch} sequences (global batch) |",
        f"| tokens | {summary.tokens:,} |",
        f"| peak learning rate | {_stage_lr(recipe, stage)} |",
        f"| validation loss | {summary.initial_val_loss:.4f} -> {summary.final_val_loss:.4f} (perplexity {summary.final_val_ppl:.2f}) |",
        f"| wall time | {summary.wall_time_s:.0f} s on {summary.device} ({summary.processes} process{'es' if summary.processes > 1 else ''}) |",
        f"| seed | {summary.seed} |",
        "",
    ]
    if eval_report is not None:
        lines += evaluation_table(eval_report)
    lines += [
        "## Use",
        "",
        "```python",
        f"from transformers import {role.auto_class}, AutoTokenizer",
        f'model = {role.auto_class}.from_pretrained("PATH_OR_HUB_ID")',
        'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_HUB_ID")',
        "```",
        "",
        "## Recipe",
        "",
        "The fully resolved recipe (`textgen " + stage + " --recipe recipe.yaml` trains this model again):",
        "",
        "```yaml",
        yaml.safe_dump(recipe, sort_keys=False).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _stage_lr(recipe: dict[str, Any], stage: str) -> Any:
    own = recipe.get(STAGE_TABLE[stage].section, {}).get("lr")
    return own if own is not None else recipe["train"]["lr"]


def evaluation_table(report: EvalReport) -> list[str]:
    """The metrics with their 95% bootstrap intervals beside the baseline, as `textgen evaluate` prints them."""
    baseline = report.baseline or {}
    rows = [
        "## Evaluation",
        "",
        f"{report.split} split, {report.n_examples:,} examples; intervals: 95% paired bootstrap.",
        "",
        f"| metric | model | 95% interval | {baseline.get('name', 'baseline')} |",
        "|---|---:|---:|---:|",
    ]
    for metric, value in report.metrics.items():
        bound = report.intervals.get(metric)
        base = baseline.get("metrics", {}).get(metric)
        interval = f"[{bound['low']:.4g}, {bound['high']:.4g}]" if bound else ""
        rows.append(f"| {metric} | {value:.4g} | {interval} | {f'{base:.4g}' if base is not None else ''} |")
    likelihood = report.likelihood or {}
    if likelihood.get("bits_per_byte") is not None:
        rows.append(f"| bits per byte | {likelihood['bits_per_byte']:.4f} | | |")
        rows.append(f"| perplexity | {likelihood['perplexity']:.2f} | | |")
    return [*rows, ""]
