"""The computations behind the shipped metric modules, free of `evaluate` (which takes seconds to
import) so that the bootstrap and the tests can call them directly.

Scales: BLEU, chrF and self-BLEU are sacrebleu's 0-100; ROUGE, distinct-n and exact match are 0-1.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

# Defaults shared by the metric modules, the bootstrap and the docs.
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
ROUGE_USE_STEMMER = False
ROUGE_TOKENIZERS = ("default", "unicode")
SELF_BLEU_MAX_SAMPLES = 200
SELF_BLEU_SEED = 1234


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    for name, texts in (("prediction", predictions), ("reference", references)):
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"{name} {i} is {type(text).__name__}, expected str (one reference per example)")


# ----------------------------------------------------------------------------------------------
# BLEU and chrF (sacrebleu)
# ----------------------------------------------------------------------------------------------


def sacrebleu_metric(name: str, **kwargs):
    """A fresh sacrebleu metric object: `BLEU()` / `CHRF()` with sacrebleu's defaults (the same as
    `sacrebleu.corpus_bleu` / `corpus_chrf`) unless overridden by kwargs."""
    from sacrebleu.metrics import BLEU, CHRF

    if name == "bleu":
        return BLEU(**kwargs)
    if name == "chrf":
        return CHRF(**kwargs)
    raise ValueError(f"no sacrebleu metric {name!r}")


def sacrebleu_stats(name: str, predictions: Sequence[str], references: Sequence[str], **kwargs):
    """Per-example sufficient statistics (an int array, one row per example) and the metric object
    that turns summed rows into a corpus score. Summing all rows reproduces `corpus_score` exactly:
    that is what sacrebleu does itself (and what its own paired bootstrap resamples)."""
    _check_pairs(predictions, references)
    metric = sacrebleu_metric(name, **kwargs)
    # Private but stable since sacrebleu 2.0; sacrebleu's significance module relies on it.
    stats = metric._extract_corpus_statistics(list(predictions), [list(references)])
    return np.asarray(stats, dtype=np.int64), metric


def score_from_stats(metric, summed: np.ndarray) -> float:
    """Corpus score from a row of summed sufficient statistics."""
    return float(metric._compute_score_from_stats([int(x) for x in summed]).score)


def bleu(predictions: Sequence[str], references: Sequence[str], **kwargs) -> dict:
    """Corpus BLEU (sacrebleu, 0-100) with its signature."""
    _check_pairs(predictions, references)
    metric = sacrebleu_metric("bleu", **kwargs)
    result = metric.corpus_score(list(predictions), [list(references)])
    return {
        "score": float(result.score),
        "signature": str(metric.get_signature()),
        "precisions": [float(p) for p in result.precisions],
        "bp": float(result.bp),
        "sys_len": int(result.sys_len),
        "ref_len": int(result.ref_len),
    }


def chrf(predictions: Sequence[str], references: Sequence[str], **kwargs) -> dict:
    """Corpus chrF (sacrebleu, 0-100; chrF++ with word_order=2) with its signature."""
    _check_pairs(predictions, references)
    metric = sacrebleu_metric("chrf", **kwargs)
    result = metric.corpus_score(list(predictions), [list(references)])
    return {"score": float(result.score), "signature": str(metric.get_signature())}


# ----------------------------------------------------------------------------------------------
# ROUGE (rouge-score), aggregated by us
# ----------------------------------------------------------------------------------------------

# A sentence ends at . ! or ? optionally followed by one closing quote or bracket, then whitespace.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'\u201d\u2019)\]])\s+")


def split_sentences(text: str) -> str:
    """One sentence per line, for rougeLsum (rouge-score splits summaries on newlines only).
    Existing newlines are kept; other sentences are split after . ! ? (plus an optional closing
    quote or bracket, straight or curly) followed by whitespace. No NLTK data is needed."""
    lines = []
    for line in text.split("\n"):
        lines.extend(s for s in _SENTENCE_END.split(line.strip()) if s)
    return "\n".join(lines)


class UnicodeTokenizer:
    """Lowercases and keeps runs of Unicode letters and digits (`[^\\W_]+`), so accented and
    non-Latin words survive; curly and straight apostrophes both split words, as in rouge-score's
    default tokenizer. The Porter stemmer (English only) is applied to tokens longer than 3
    characters when asked, as rouge-score does."""

    _TOKEN = re.compile(r"[^\W_]+")

    def __init__(self, use_stemmer: bool = False):
        self._stemmer = None
        if use_stemmer:
            from nltk.stem import porter

            self._stemmer = porter.PorterStemmer()

    def tokenize(self, text: str) -> list[str]:
        tokens = self._TOKEN.findall(text.lower())
        if self._stemmer is not None:
            tokens = [self._stemmer.stem(t) if len(t) > 3 else t for t in tokens]
        return tokens


def rouge_scorer(
    rouge_types: Iterable[str] = ROUGE_TYPES, use_stemmer: bool = ROUGE_USE_STEMMER, tokenizer: str = "default"
):
    from rouge_score import rouge_scorer as rs

    if tokenizer not in ROUGE_TOKENIZERS:
        raise ValueError(f"unknown ROUGE tokenizer {tokenizer!r}; expected one of {ROUGE_TOKENIZERS}")
    tok = UnicodeTokenizer(use_stemmer) if tokenizer == "unicode" else None
    return rs.RougeScorer(list(rouge_types), use_stemmer=use_stemmer, tokenizer=tok)


def rouge_per_example(
    predictions: Sequence[str],
    references: Sequence[str],
    rouge_types: Iterable[str] = ROUGE_TYPES,
    use_stemmer: bool = ROUGE_USE_STEMMER,
    tokenizer: str = "default",
) -> dict[str, list[float]]:
    """Per-example ROUGE F1 (0-1) for each type. rougeLsum sees the texts split into sentences
    by `split_sentences`; the other types see the texts unchanged."""
    _check_pairs(predictions, references)
    rouge_types = list(rouge_types)
    scorer = rouge_scorer(rouge_types, use_stemmer, tokenizer)
    out: dict[str, list[float]] = {t: [] for t in rouge_types}
    for pred, ref in zip(predictions, references):
        if "rougeLsum" in rouge_types:
            # The splitting only matters for rougeLsum; tokens (and so the other types) are unchanged.
            scores = scorer.score(split_sentences(ref), split_sentences(pred))
        else:
            scores = scorer.score(ref, pred)  # rouge-score's order: target first
        for t in rouge_types:
            out[t].append(float(scores[t].fmeasure))
    return out


def rouge_signature(use_stemmer: bool, tokenizer: str) -> str:
    from importlib.metadata import version

    try:
        v = version("rouge-score")
    except Exception:  # pragma: no cover - metadata missing
        v = "unknown"
    return f"f1|agg:mean|tok:{tokenizer}|stem:{'yes' if use_stemmer else 'no'}|lsum:sentences|version:{v}"


def rouge(
    predictions: Sequence[str],
    references: Sequence[str],
    rouge_types: Iterable[str] = ROUGE_TYPES,
    use_stemmer: bool = ROUGE_USE_STEMMER,
    tokenizer: str = "default",
) -> dict:
    per = rouge_per_example(predictions, references, rouge_types, use_stemmer, tokenizer)
    result: dict = {t: float(np.mean(v)) for t, v in per.items()}
    result["signature"] = rouge_signature(use_stemmer, tokenizer)
    result["per_example"] = per
    return result


# ----------------------------------------------------------------------------------------------
# Diversity
# ----------------------------------------------------------------------------------------------


def distinct_counts(predictions: Sequence[str], n: int) -> tuple[int, int]:
    """(unique n-grams, total n-grams) over the whole corpus of predictions, whitespace tokens,
    case-sensitive, punctuation kept attached. A prediction shorter than n contributes nothing."""
    if n < 1:
        raise ValueError("n must be >= 1")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in predictions:
        tokens = text.split()
        for i in range(len(tokens) - n + 1):
            seen.add(tuple(tokens[i : i + n]))
            total += 1
    return len(seen), total


def distinct(predictions: Sequence[str], orders: Iterable[int] = (1, 2)) -> dict:
    result: dict = {}
    for n in orders:
        unique, total = distinct_counts(predictions, n)
        result[f"distinct_{n}"] = unique / total if total else 0.0
        result[f"unique_{n}"] = unique
        result[f"total_{n}"] = total
    result["signature"] = "corpus|tok:whitespace|case:mixed"
    return result


def _sample_indices(n: int, max_samples: int, seed: int) -> list[int]:
    if n <= max_samples:
        return list(range(n))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n, size=max_samples, replace=False))


def self_bleu(predictions: Sequence[str], max_samples: int = SELF_BLEU_MAX_SAMPLES, seed: int = SELF_BLEU_SEED) -> dict:
    """Mean sentence BLEU (sacrebleu, effective order, exp smoothing, 13a) of each sampled
    prediction against all the other sampled predictions as its references (Texygen's Self-BLEU).

    Equal to averaging `BLEU(effective_order=True).sentence_score(p_i, others)` over the sample,
    but computed in O(total n-grams) rather than O(N^2) tokenizations: for every n-gram we keep
    its two largest per-prediction counts, so the clipping count "max over the others" is read
    without rebuilding the reference set for each i.
    """
    if max_samples < 2:
        raise ValueError("self-BLEU needs max_samples >= 2")
    idx = _sample_indices(len(predictions), max_samples, seed)
    metric = sacrebleu_metric("bleu", effective_order=True)
    metric.num_refs = max(len(idx) - 1, 1)  # each prediction has the other sampled ones as references
    signature = str(metric.get_signature())
    base = {
        "n_sampled": len(idx),
        "max_samples": max_samples,
        "seed": seed,
        "signature": f"self-bleu|sample:{len(idx)}|seed:{seed}|{signature}",
    }
    if len(idx) < 2:
        return {"self_bleu": None, **base}

    from sacrebleu.metrics.helpers import extract_all_word_ngrams

    order = metric.max_ngram_order
    grams: list[Counter] = []
    lens: list[int] = []
    for i in idx:
        counts, length = extract_all_word_ngrams(metric._preprocess_segment(predictions[i]), 1, order)
        grams.append(counts)
        lens.append(length)

    # n-gram -> [(count, owner), (count, owner)]: the two largest counts and who has them.
    top2: dict[tuple, list[tuple[int, int]]] = {}
    for j, counts in enumerate(grams):
        for g, c in counts.items():
            best = top2.get(g)
            if best is None:
                top2[g] = [(c, j)]
            elif len(best) == 1:
                best.append((c, j))
                best.sort(reverse=True)
            elif c > best[1][0]:
                best[1] = (c, j)
                best.sort(reverse=True)

    scores = []
    for i, counts in enumerate(grams):
        correct = [0] * order
        total = [0] * order
        for g, c in counts.items():
            k = len(g) - 1
            total[k] += c
            other = 0
            for cnt, owner in top2[g]:
                if owner != i:
                    other = cnt
                    break
            correct[k] += min(c, other)
        ref_len = metric._get_closest_ref_len(lens[i], lens[:i] + lens[i + 1 :])
        scores.append(score_from_stats(metric, np.array([lens[i], ref_len] + correct + total)))
    return {"self_bleu": float(np.mean(scores)), **base}


# ----------------------------------------------------------------------------------------------
# Exact match
# ----------------------------------------------------------------------------------------------


def exact_match_per_example(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    _check_pairs(predictions, references)
    return [1.0 if p.strip() == r.strip() else 0.0 for p, r in zip(predictions, references)]


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> dict:
    per = exact_match_per_example(predictions, references)
    return {"exact_match": float(np.mean(per)), "matches": int(sum(per)), "total": len(per)}
