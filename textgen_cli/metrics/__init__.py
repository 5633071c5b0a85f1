"""Text-generation metrics, shipped as local `evaluate` modules (no Hub, no network).

API for the evaluate verb:
    METRIC_NAMES                         shipped metric names (from registry.py: every reported number, one entry each)
    load_metric(name_or_path)            -> evaluate.EvaluationModule
    compute_metrics(names, predictions, references, sources=None, options=None) -> {name: {...}}
    paired_bootstrap(metric_fn, predictions_a, predictions_b, references, n_resamples, seed, confidence)
    perplexity(total_nll, n_tokens), bits_per_byte(total_nll_nats, n_bytes), utf8_bytes(text),
    LikelihoodTotals

`evaluate` (which imports transformers, seconds) is imported only by load_metric/compute_metrics.
See docs/metrics.md for what each metric computes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from textgen_cli.core.errors import UserError
from textgen_cli.metrics._bootstrap import (
    BOOTSTRAP_METRICS,
    bits_per_byte_gap_interval,
    holm,
    paired_bootstrap,
    two_level_bits_per_byte,
    two_level_bootstrap,
)
from textgen_cli.metrics.likelihood import LikelihoodTotals, bits_per_byte, perplexity, utf8_bytes
from textgen_cli.metrics.paths import _normalize, resolve_metric_path
from textgen_cli.metrics.registry import METRIC_NAMES

__all__ = [
    "METRIC_NAMES",
    "BOOTSTRAP_METRICS",
    "load_metric",
    "resolve_metric_path",
    "compute_metrics",
    "paired_bootstrap",
    "two_level_bootstrap",
    "bits_per_byte_gap_interval",
    "two_level_bits_per_byte",
    "holm",
    "perplexity",
    "bits_per_byte",
    "utf8_bytes",
    "LikelihoodTotals",
]


def load_metric(name_or_path: str):
    """Load a shipped metric by name, or a user's evaluate module from a .py file or directory.

    The module is always loaded from an absolute local file path, so evaluate never falls back to
    the Hub (it does for a bare relative name that is not a file). Returns an
    `evaluate.EvaluationModule` kept in memory (no cache files). Raises UserError for an unknown
    name (with the closest shipped name), a missing path, or a module that fails to load.
    """
    script = resolve_metric_path(name_or_path)
    import evaluate

    try:
        module = evaluate.load(str(script), keep_in_memory=True)
    except Exception as e:  # noqa: BLE001 - any failure in a user's script is the user's to fix
        raise UserError(f"could not load metric {name_or_path!r} from {script}: {type(e).__name__}: {e}") from e
    if not isinstance(module, evaluate.EvaluationModule):
        raise UserError(f"{script} does not define an evaluate.Metric")
    return module


def _feature_names(module) -> list[str]:
    features = module.features
    if isinstance(features, list):
        features = features[0]
    return list(features.keys())


def compute_metrics(
    names: Sequence[str],
    predictions: Sequence[str],
    references: Sequence[str] | None,
    sources: Sequence[str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict]:
    """Run each metric in `names` (shipped names or paths) and return {entry: result dict}.

    Each module receives only the inputs its features name (predictions, references, sources);
    `options[entry]` are extra keyword arguments for its compute (e.g. {"chrf": {"word_order": 2}}).
    Results are the modules' own dicts: BLEU/chrF/ROUGE/distinct/self-BLEU carry a `signature`
    string; ROUGE also carries `per_example` (a list per ROUGE type). A user module returning a
    non-dict is wrapped as {"value": ...}.
    """
    options = options or {}
    inputs = {"predictions": list(predictions)}
    if not inputs["predictions"]:
        raise ValueError("no predictions to score")
    if references is not None:
        inputs["references"] = list(references)
    if sources is not None:
        inputs["sources"] = list(sources)
    for key, values in inputs.items():
        if len(values) != len(inputs["predictions"]):
            raise ValueError(f"{len(values)} {key} but {len(inputs['predictions'])} predictions")

    results: dict[str, dict] = {}
    for entry in names:
        module = load_metric(entry)
        wanted = _feature_names(module)
        missing = [f for f in wanted if f not in inputs]
        if missing:
            raise UserError(f"metric {entry!r} needs {', '.join(missing)}, which this evaluation does not have")
        try:
            out = module.compute(**{f: inputs[f] for f in wanted}, **dict(options.get(entry, {})))
        except UserError:
            raise
        except Exception as e:
            if _normalize(entry) in METRIC_NAMES:
                raise
            raise UserError(f"metric {entry!r} failed: {type(e).__name__}: {e}") from e
        results[entry] = out if isinstance(out, dict) else {"value": out}
    return results
