"""The metric rows of a split: corpus metrics with bootstrap intervals, paired differences, the
trivial baselines a model must beat (copy-source, retrieval, most frequent reply) and degeneration."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from textgen_cli.data.readers import EvalExample, examples_from, read_finetune_examples
from textgen_cli.metrics.registry import INTERVAL_ROWS, METRIC_NAMES, module_rows


def metric_rows(results: dict[str, dict]) -> tuple[dict[str, float], dict[str, str]]:
    """One number per row (a shipped module's rows are its entries in metrics/registry.py; a user's
    module gives every number it returns), and the signature of each metric that has one."""
    rows: dict[str, float] = {}
    signatures: dict[str, str] = {}
    picks = {module: module_rows(module) for module in METRIC_NAMES}
    for entry, result in results.items():
        wanted = picks.get(entry) or {
            key: key if key == entry else f"{Path(entry).stem}.{key}"
            for key, value in result.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        for key, row in wanted.items():
            value = result.get(key)
            if isinstance(value, (int, float)):
                rows[row] = float(value)
                if "signature" in result:
                    signatures[row] = result["signature"]
    return rows, signatures


def score(
    names: Sequence[str], predictions: list[str], references: list[str], sources: list[str]
) -> tuple[dict[str, float], dict[str, str]]:
    from textgen_cli.metrics import compute_metrics

    return metric_rows(compute_metrics(list(names), predictions, references, sources))


def intervals(
    predictions: list[str], references: list[str], n_resamples: int, seed: int
) -> dict[str, dict[str, float]]:
    from textgen_cli.metrics import paired_bootstrap

    out = {}
    for row in INTERVAL_ROWS:  # an interval row's name is also its bootstrap metric's
        result = paired_bootstrap(row, predictions, None, references, n_resamples=n_resamples, seed=seed)
        out[row] = {"low": result["low"], "high": result["high"]}
    return out


def versus(
    predictions: list[str], baseline: list[str], references: list[str], n_resamples: int, seed: int
) -> dict[str, dict[str, Any]]:
    """Paired bootstrap of model minus baseline: is the model better, beyond resampling noise?"""
    from textgen_cli.metrics import paired_bootstrap

    out = {}
    for row in INTERVAL_ROWS:
        result = paired_bootstrap(row, predictions, baseline, references, n_resamples=n_resamples, seed=seed)
        out[row] = {
            "diff": result["diff"]["score"],
            "low": result["diff"]["low"],
            "high": result["diff"]["high"],
            "model_wins": result["a_wins"],
        }
    return out


def degeneration(sources: list[str], predictions: list[str], references: list[str]) -> dict[str, float]:
    """Distinct outputs per distinct source, and the repeated 4-gram rate of outputs and references."""
    from textgen_cli.metrics.checks import distinct_outputs_share, repeated_ngram_rate

    return {
        "distinct_outputs_share": distinct_outputs_share(sources, predictions),
        "distinct_sources": len(set(sources)),
        "distinct_outputs": len(set(predictions)),
        "repeated_4gram_rate": repeated_ngram_rate(predictions, 4),
        "reference_repeated_4gram_rate": repeated_ngram_rate(references, 4),
    }


def baseline_predictions(loaded, examples: list[EvalExample]) -> list[dict[str, Any]]:
    """The trivial systems a model must beat, each as {key, label, name, predictions}.

    Pairs: copy the source. Dialogue: retrieval (the response of the training example whose last
    user turn is nearest to this one, TF-IDF cosine; deterministic) and the most frequent training
    response."""
    recipe = loaded.recipe
    if recipe.data.finetune.task == "pairs":
        return [
            {
                "key": "copy_source",
                "label": "copy source",
                "name": "copy source",
                "predictions": [example.source for example in examples],
            }
        ]
    from textgen_cli.metrics.checks import NearestPrompt

    training = examples_from(
        read_finetune_examples(recipe.data.finetune, "train", recipe.data.max_examples), "dialogue"
    )
    counts = Counter(
        turn["content"]
        for dialogue in read_finetune_examples(recipe.data.finetune, "train", recipe.data.max_examples)
        for turn in dialogue.messages
        if turn["role"] == "assistant"
    )
    most_common = counts.most_common(1)[0][0]
    out = [
        {
            "key": "most_frequent",
            "label": "most frequent response",
            "name": f"most frequent training response ({most_common!r})",
            "predictions": [most_common] * len(examples),
        }
    ]
    if training:
        index = NearestPrompt([t.source for t in training])
        retrieved = [training[index.nearest(example.source)].reference for example in examples]
        out.append(
            {
                "key": "retrieval",
                "label": "retrieval",
                "name": "retrieval (response of the nearest training prompt, TF-IDF cosine)",
                "predictions": retrieved,
            }
        )
    return out


def score_baselines(
    loaded,
    examples: list[EvalExample],
    predictions: list[str],
    metric_names: Sequence[str],
    n_resamples: int,
    seed: int,
) -> list[dict[str, Any]]:
    """Every baseline scored like the model, with the paired bootstrap of model minus baseline."""
    references = [e.reference for e in examples]
    sources = [e.source for e in examples]
    scored = []
    for baseline in baseline_predictions(loaded, examples):
        metrics, _ = score(metric_names, baseline["predictions"], references, sources)
        scored.append(
            {
                "key": baseline["key"],
                "label": baseline["label"],
                "name": baseline["name"],
                "metrics": metrics,
                "versus": versus(predictions, baseline["predictions"], references, n_resamples, seed),
            }
        )
    return scored
