"""Sanity statistics that tell a broken model from a working one, in plain Python (no heavy imports).

    distinct_outputs_share(sources, predictions)   distinct outputs per distinct source
    repeated_ngram_rate(texts, n=4)                share of n-grams that repeat one earlier in the same text
    welch_t_test(a, b)                             Welch's unequal-variance t-test, two-sided p-value
    NearestPrompt(prompts)                         TF-IDF cosine retrieval over training prompts

See docs/metrics.md.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

_WORD = re.compile(r"\w+", re.UNICODE)


def distinct_outputs_share(sources: Sequence[str], predictions: Sequence[str]) -> float:
    """Distinct predictions / distinct sources, over the first prediction of each distinct source,
    capped at 1. A model that ignores its input writes the same text for every source: 1/N."""
    if len(sources) != len(predictions):
        raise ValueError(f"{len(sources)} sources but {len(predictions)} predictions")
    first: dict[str, str] = {}
    for source, prediction in zip(sources, predictions):
        first.setdefault(source, prediction)
    if not first:
        return 0.0
    return min(1.0, len(set(first.values())) / len(first))


def repeated_ngram_rate(texts: Sequence[str], n: int = 4) -> float:
    """seq-rep-n (Welleck et al., 2020), pooled over the corpus: of all word n-grams of all texts, the
    share that repeat an earlier n-gram of the same text. 0 for texts without loops; "and the Lord,
    and the Lord, and the Lord" scores high. Texts shorter than n words add nothing."""
    total = repeated = 0
    for text in texts:
        words = text.lower().split()
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        repeated += len(grams) - len(set(grams))
    return repeated / total if total else 0.0


def _t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with df degrees of freedom (df may be fractional), exact through the
    regularized incomplete beta function: P(|T| > |t|) = I_{df/(df+t^2)}(df/2, 1/2)."""
    x = df / (df + t * t)
    two_sided = _betainc(df / 2.0, 0.5, x)
    return two_sided / 2.0 if t > 0 else 1.0 - two_sided / 2.0


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) by its continued fraction (Numerical Recipes, betacf)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1.0 - x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _betacf(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float | str]:
    """Welch's t-test of mean(a) == mean(b), two-sided. Needs two or more values on each side.
    Uses scipy when installed, else the exact Student-t tail above (the same numbers to ~1e-12).
    Both samples without spread: p = 0 if the means differ, 1 if not."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("Welch's t-test needs two or more values on each side")
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1)
    se2 = va / len(a) + vb / len(b)
    if se2 == 0.0:
        return {
            "t": math.inf if ma != mb else 0.0,
            "df": float(len(a) + len(b) - 2),
            "p": 0.0 if ma != mb else 1.0,
            "method": "exact (no spread)",
        }
    t = (ma - mb) / math.sqrt(se2)
    df = se2**2 / ((va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1))
    try:
        from scipy import stats  # type: ignore[import-not-found]
    except ImportError:
        return {"t": t, "df": df, "p": min(1.0, 2.0 * _t_sf(abs(t), df)), "method": "exact Student-t tail (textgen)"}
    result = stats.ttest_ind(list(a), list(b), equal_var=False)
    return {
        "t": float(result.statistic),
        "df": df,
        "p": float(result.pvalue),
        "method": "scipy.stats.ttest_ind(equal_var=False)",
    }


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class NearestPrompt:
    """TF-IDF cosine retrieval: the index of the training prompt nearest to a query. Smoothed idf
    (ln((1 + N) / (1 + df)) + 1, as scikit-learn's default), raw term counts, L2-normalised vectors,
    ties to the lowest index: deterministic. A query sharing no word with any prompt gets index 0."""

    def __init__(self, prompts: Sequence[str]):
        if not prompts:
            raise ValueError("no training prompts to retrieve from")
        counts = [Counter(words(p)) for p in prompts]
        df = Counter(w for c in counts for w in c)
        n = len(prompts)
        self.idf = {w: math.log((1 + n) / (1 + k)) + 1.0 for w, k in df.items()}
        self.postings: dict[str, list[tuple[int, float]]] = {}
        for index, c in enumerate(counts):
            vector = self._vector(c)
            for w, value in vector.items():
                self.postings.setdefault(w, []).append((index, value))

    def _vector(self, c: Counter) -> dict[str, float]:
        vector = {w: k * self.idf[w] for w, k in c.items() if w in self.idf}
        norm = math.sqrt(sum(v * v for v in vector.values()))
        return {w: v / norm for w, v in vector.items()} if norm else {}

    def nearest(self, query: str) -> int:
        scores: dict[int, float] = {}
        for w, value in self._vector(Counter(words(query))).items():
            for index, weight in self.postings.get(w, ()):
                scores[index] = scores.get(index, 0.0) + value * weight
        if not scores:
            return 0
        return min(scores, key=lambda i: (-round(scores[i], 12), i))
