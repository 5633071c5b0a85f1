"""Paired bootstrap resampling (Koehn 2004), seeded.

Each metric is reduced to per-example statistics once; a resample is then a vector of counts
(how often each example was drawn), and its corpus statistics are `counts @ stats`. BLEU and chrF
re-score the summed sacrebleu sufficient statistics (exactly what `corpus_score` does on the
resampled corpus); ROUGE and exact match are means of per-example scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Union

import numpy as np

import textgen_cli.metrics._core as _core

BOOTSTRAP_METRICS = ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "rougeLsum", "exact_match")

MetricFn = Union[str, Callable[[Sequence[str], Sequence[str]], float]]  # noqa: UP007 (a runtime alias)


class _Statistic:
    """Per-example statistics of one system plus the function from summed rows to a score."""

    def __init__(self, stats: np.ndarray, score: Callable[[np.ndarray], float], signature: str | None = None):
        self.stats = np.asarray(stats, dtype=np.float64 if stats.dtype.kind == "f" else np.int64)
        self.score = score
        self.signature = signature

    def point(self) -> float:
        return self.score(self.stats.sum(axis=0))

    def resampled(self, counts: np.ndarray) -> np.ndarray:
        sums = counts @ self.stats  # [R, k]
        return np.array([self.score(row) for row in sums], dtype=np.float64)


def _statistic(name: str, predictions: Sequence[str], references: Sequence[str]) -> _Statistic:
    if name in ("bleu", "chrf"):
        stats, metric = _core.sacrebleu_stats(name, predictions, references)
        return _Statistic(stats, lambda row: _core.score_from_stats(metric, row), str(metric.get_signature()))
    if name in _core.ROUGE_TYPES:
        per = np.asarray(_core.rouge_per_example(predictions, references, [name])[name], dtype=np.float64)
        n = len(per)
        return _Statistic(
            per[:, None], lambda row: float(row[0]) / n, _core.rouge_signature(_core.ROUGE_USE_STEMMER, "default")
        )
    if name == "exact_match":
        per = np.asarray(_core.exact_match_per_example(predictions, references), dtype=np.float64)
        n = len(per)
        return _Statistic(per[:, None], lambda row: float(row[0]) / n)
    raise ValueError(f"no fast bootstrap for {name!r}; expected one of {BOOTSTRAP_METRICS} or a callable")


def _resample_indices(n: int, n_resamples: int, seed: int, chunk: int = 256):
    """Yield [rows, n] arrays of example indices drawn with replacement, `n_resamples` rows in all.
    The same (n, n_resamples, seed) always gives the same resamples, and every system scored in
    one call sees the same ones: that is what makes the comparison paired."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_resamples:
        rows = min(chunk, n_resamples - done)
        yield rng.integers(0, n, size=(rows, n))
        done += rows


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """[rows, n] matrix: how often each example appears in each resample."""
    rows = idx.shape[0]
    flat = (idx + np.arange(rows)[:, None] * n).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n)


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def paired_bootstrap(
    metric_fn: MetricFn,
    predictions_a: Sequence[str],
    predictions_b: Sequence[str] | None,
    references: Sequence[str],
    n_resamples: int = 1000,
    seed: int = 1234,
    confidence: float = 0.95,
) -> dict:
    """Percentile bootstrap interval for one system, or paired comparison of two.

    `metric_fn` is a name from BOOTSTRAP_METRICS (fast path over per-example statistics) or any
    callable `(predictions, references) -> float`, which is re-run on every resample (slow).

    One system (`predictions_b` is None):
        {"metric", "score", "low", "high", "confidence", "n_resamples", "seed", ["signature"]}
    Two systems, scored on the same resampled example indices:
        {"metric", "a": {score, low, high}, "b": {score, low, high},
         "diff": {score, low, high}  (A - B), "a_wins", "b_wins", "ties" (fractions of resamples),
         "confidence", "n_resamples", "seed", ["signature"]}
    `score` is always the metric on the full, unresampled set.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be in (0, 1)")
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    n = len(references)
    systems = [predictions_a] if predictions_b is None else [predictions_a, predictions_b]
    for preds in systems:
        if len(preds) != n:
            raise ValueError(f"{len(preds)} predictions but {n} references")
    if n == 0:
        raise ValueError("no examples to resample")

    if isinstance(metric_fn, str):
        name = metric_fn
        stats = [_statistic(metric_fn, preds, references) for preds in systems]
        points = [s.point() for s in stats]
        samples = [[] for _ in systems]
        for idx in _resample_indices(n, n_resamples, seed):
            counts = _counts(idx, n)
            for k, s in enumerate(stats):
                samples[k].append(s.resampled(counts))
        samples = [np.concatenate(v) for v in samples]
        signature = stats[0].signature
    else:
        name = getattr(metric_fn, "__name__", "custom")
        refs = list(references)
        systems = [list(p) for p in systems]
        points = [float(metric_fn(p, refs)) for p in systems]
        samples = [[] for _ in systems]
        for chunk in _resample_indices(n, n_resamples, seed):
            for idx in chunk:
                r = [refs[i] for i in idx]
                for k, p in enumerate(systems):
                    samples[k].append(float(metric_fn([p[i] for i in idx], r)))
        samples = [np.asarray(v, dtype=np.float64) for v in samples]
        signature = None

    meta = {"confidence": confidence, "n_resamples": n_resamples, "seed": seed}
    if signature:
        meta["signature"] = signature
    if predictions_b is None:
        low, high = _interval(samples[0], confidence)
        return {"metric": name, "score": points[0], "low": low, "high": high, **meta}

    diff = samples[0] - samples[1]
    out = {"metric": name}
    for key, point, values in (
        ("a", points[0], samples[0]),
        ("b", points[1], samples[1]),
        ("diff", points[0] - points[1], diff),
    ):
        low, high = _interval(values, confidence)
        out[key] = {"score": point, "low": low, "high": high}
    out["a_wins"] = float(np.mean(diff > 0))
    out["b_wins"] = float(np.mean(diff < 0))
    out["ties"] = float(np.mean(diff == 0))
    out.update(meta)
    return out


def two_level_bootstrap(
    metric: str,
    seeds_a: Sequence[Sequence[str]],
    seeds_b: Sequence[Sequence[str]],
    references: Sequence[str],
    n_resamples: int = 1000,
    seed: int = 1234,
    confidence: float = 0.95,
) -> dict:
    """The difference between two arms (A - B) with an interval that covers training noise and
    test-set noise together: a hierarchical bootstrap over each arm's trained models (one list of
    predictions per seed) and then the test examples.

    Each replicate (1) resamples the seeds of each arm with replacement, (2) resamples the test
    examples once for both arms (they are paired: the same references), (3) takes the mean metric
    over the drawn seeds of each arm, and the difference. With one seed per arm it is the paired
    bootstrap over examples. `p` is the two-sided bootstrap p-value of a zero difference
    (2 x the smaller tail), for a multiple-testing correction.

    {"metric", "diff": {score, low, high}, "a": {...}, "b": {...}, "p", "seeds": [n_a, n_b], ...};
    `score`: the mean over seeds of each seed's metric on the whole test set."""
    if not seeds_a or not seeds_b:
        raise ValueError("each arm needs at least one seed's predictions")
    stats_a = [_statistic(metric, preds, references) for preds in seeds_a]
    stats_b = [_statistic(metric, preds, references) for preds in seeds_b]
    return _two_level(metric, stats_a, stats_b, len(references), n_resamples, seed, confidence)


def two_level_bits_per_byte(
    seeds_a: Sequence[tuple[Sequence[float], Sequence[int]]],
    seeds_b: Sequence[tuple[Sequence[float], Sequence[int]]],
    n_resamples: int = 1000,
    seed: int = 1234,
    confidence: float = 0.95,
) -> dict:
    """`two_level_bootstrap` for the references' bits per byte (lower is better): each seed of an arm
    gives every test reference's summed NLL (nats) and UTF-8 bytes, in the same example order for
    every seed and arm; a replicate's bits per byte is the ratio of the resampled sums."""
    if not seeds_a or not seeds_b:
        raise ValueError("each arm needs at least one seed's reference scores")
    sizes = {len(nll) for nll, _ in (*seeds_a, *seeds_b)} | {len(b) for _, b in (*seeds_a, *seeds_b)}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError("every seed must score the same, non-empty list of references")

    def statistic(nll: Sequence[float], n_bytes: Sequence[int]) -> _Statistic:
        stats = np.stack([np.asarray(nll, dtype=np.float64), np.asarray(n_bytes, dtype=np.float64)], axis=1)
        return _Statistic(stats, lambda row: float(row[0] / (np.log(2) * row[1])))

    stats_a = [statistic(*scores) for scores in seeds_a]
    stats_b = [statistic(*scores) for scores in seeds_b]
    return _two_level("bits_per_byte", stats_a, stats_b, sizes.pop(), n_resamples, seed, confidence)


def _two_level(
    metric: str,
    stats_a: list[_Statistic],
    stats_b: list[_Statistic],
    n: int,
    n_resamples: int,
    seed: int,
    confidence: float,
) -> dict:
    rng = np.random.default_rng(seed + 1)  # the seed draws; the example draws use `seed`
    means: dict[str, list[np.ndarray]] = {"a": [], "b": []}
    for idx in _resample_indices(n, n_resamples, seed):
        counts = _counts(idx, n)
        for key, stats in (("a", stats_a), ("b", stats_b)):
            per_seed = np.stack([s.resampled(counts) for s in stats], axis=1)  # [rows, seeds]
            drawn = rng.integers(0, len(stats), size=per_seed.shape)  # seeds drawn with replacement
            means[key].append(np.take_along_axis(per_seed, drawn, axis=1).mean(axis=1))
    a, b = np.concatenate(means["a"]), np.concatenate(means["b"])
    diff = a - b
    points = {"a": float(np.mean([s.point() for s in stats_a])), "b": float(np.mean([s.point() for s in stats_b]))}
    out: dict = {"metric": metric}
    for key, point, values in (("a", points["a"], a), ("b", points["b"], b), ("diff", points["a"] - points["b"], diff)):
        low, high = _interval(values, confidence)
        out[key] = {"score": point, "low": low, "high": high}
    out["p"] = float(min(1.0, 2 * min(np.mean(diff <= 0), np.mean(diff >= 0))))
    out.update(seeds=[len(stats_a), len(stats_b)], confidence=confidence, n_resamples=n_resamples, seed=seed)
    return out


def holm(p_values: dict[str, float], alpha: float = 0.05) -> dict[str, bool]:
    """Holm-Bonferroni: which of these hypotheses are rejected at family-wise level `alpha`."""
    rejected = {}
    ordered = sorted(p_values.items(), key=lambda item: item[1])
    for rank, (name, p) in enumerate(ordered):
        if p > alpha / (len(ordered) - rank):
            rejected.update({later: False for later, _ in ordered[rank:]})
            break
        rejected[name] = True
    return rejected


def bits_per_byte_gap_interval(
    nll_own: Sequence[float],
    nll_other: Sequence[float],
    n_bytes: Sequence[int],
    n_resamples: int = 1000,
    seed: int = 1234,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the bits-per-byte gap `other - own` over examples.

    Each example gives its reference's summed NLL (nats) under its own source and under another
    source, and the reference's UTF-8 bytes; a resample redraws the examples and takes the ratio of
    the resampled sums (bits per byte is a ratio of sums, never a mean of per-example ratios), so
    the interval covers the test-set noise of the input-use check."""
    own = np.asarray(nll_own, dtype=np.float64)
    other = np.asarray(nll_other, dtype=np.float64)
    size = np.asarray(n_bytes, dtype=np.float64)
    if not len(own) == len(other) == len(size) or len(own) == 0:
        raise ValueError("bits_per_byte_gap_interval needs equal, non-empty per-example lists")
    stats = np.stack([other - own, size], axis=1)  # [n, 2]
    gaps = []
    for idx in _resample_indices(len(own), n_resamples, seed):
        sums = _counts(idx, len(own)) @ stats
        gaps.append(sums[:, 0] / (np.log(2) * sums[:, 1]))
    return _interval(np.concatenate(gaps), confidence)
