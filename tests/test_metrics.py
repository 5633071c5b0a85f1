"""Metrics: shipped evaluate modules against their reference libraries, hand-computed diversity
cases, the bootstrap, user modules loaded from a path, and the likelihood helpers."""

from __future__ import annotations

import math
import os
import socket

# textgen never talks to a hub; evaluate reads these when it is first imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

from textgen_cli.core.errors import UserError
from textgen_cli.metrics import (
    METRIC_NAMES,
    LikelihoodTotals,
    _core,
    bits_per_byte,
    compute_metrics,
    load_metric,
    paired_bootstrap,
    perplexity,
    resolve_metric_path,
    utf8_bytes,
)

# Curly quotes, non-ASCII letters, an empty prediction, an empty-ish line, a repeated sentence.
PREDICTIONS = [
    "They said to him, “In Bethlehem of Judea, for this is written by the prophet,",
    "But he answered, “It is written, ‘Man shall not live by bread alone.’”",
    "",
    "Jesus said to him, “Get behind me, Satan!”",
    "The café in Judæa is closed — come back tomorrow.",
    "Then he touched their eyes, saying, “According to your faith be it done to you.”",
    "yes",
    "   ",
]
REFERENCES = [
    "They said to him, “In Bethlehem of Judea, for this is written through the prophet,",
    "But he answered, “It is written, ‘Man shall not live by bread alone, but by every word.’”",
    "Now when John heard in the prison the works of Christ,",
    "Then Jesus said to him, “Get behind me, Satan! For it is written.”",
    "The cafe in Judaea is closed; come back tomorrow.",
    "Then he touched their eyes, saying, “According to your faith be it done to you.”",
    "Yes",
    "nothing",
]


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection or resolve a name fails the test."""
    attempts = []

    def blocked(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", blocked)
    monkeypatch.setattr(socket.socket, "connect_ex", blocked)
    monkeypatch.setattr(socket, "getaddrinfo", blocked)
    monkeypatch.setattr(socket, "create_connection", blocked)
    yield attempts
    assert attempts == [], f"network access attempted: {attempts}"


@pytest.fixture(scope="module")
def modules():
    return {name: load_metric(name) for name in METRIC_NAMES}


# ------------------------------------------------------------------ loading, offline


def test_every_shipped_metric_loads_offline_and_computes(no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    import evaluate

    for name in METRIC_NAMES:
        path = resolve_metric_path(name)
        assert path.is_file() and path.name == f"{name}.py" and path.parent.name == name
        module = load_metric(name)
        assert isinstance(module, evaluate.Metric)
        assert module.info.description and module.info.features is not None
        wanted = set(module.features.keys())
        kwargs = {"predictions": PREDICTIONS[:3]}
        if "references" in wanted:
            kwargs["references"] = REFERENCES[:3]
        assert isinstance(module.compute(**kwargs), dict)


def test_names_are_normalized():
    assert resolve_metric_path("chrF") == resolve_metric_path("chrf")
    assert resolve_metric_path("self-BLEU") == resolve_metric_path("self_bleu")
    assert resolve_metric_path("Exact-Match").parent.name == "exact_match"


@pytest.mark.parametrize(
    "name, suggestion",
    [
        ("blue", "bleu"),
        ("rogue", "rouge"),
        ("chrff", "chrf"),
        ("selfbleu", "self_bleu"),
        ("distinct2", "distinct"),
        ("exactmatch", "exact_match"),
    ],
)
def test_unknown_metric_suggests_closest(name, suggestion):
    with pytest.raises(UserError) as err:
        load_metric(name)
    assert f"Did you mean {suggestion!r}?" in str(err.value)
    assert "bleu, chrf, rouge" in str(err.value)


def test_unknown_metric_without_close_match():
    with pytest.raises(UserError) as err:
        load_metric("perplexityzzz")
    assert "Did you mean" not in str(err.value)
    assert "unknown metric" in str(err.value)


USER_METRIC = '''
"""A user's metric: mean character length ratio."""

import datasets
import evaluate


class LengthRatio(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="mean len(prediction) / len(reference)",
            citation="",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, scale=1.0):
        ratios = [len(p) / max(len(r), 1) for p, r in zip(predictions, references)]
        return {"length_ratio": scale * sum(ratios) / len(ratios)}
'''


def test_user_module_from_dir_and_file(tmp_path, no_network, monkeypatch):
    folder = tmp_path / "length_ratio"
    folder.mkdir()
    (folder / "length_ratio.py").write_text(USER_METRIC)
    by_dir = load_metric(str(folder))
    by_file = load_metric(str(folder / "length_ratio.py"))
    preds, refs = ["ab", "abcd"], ["abcd", "abcd"]
    assert by_dir.compute(predictions=preds, references=refs) == {"length_ratio": 0.75}
    assert by_file.compute(predictions=preds, references=refs) == {"length_ratio": 0.75}

    # A bare relative directory name that is not a shipped name is a local path, never the Hub.
    monkeypatch.chdir(tmp_path)
    results = compute_metrics(["length_ratio", "exact_match"], preds, refs, options={"length_ratio": {"scale": 2.0}})
    assert results["length_ratio"] == {"length_ratio": 1.5}
    assert results["exact_match"]["exact_match"] == 0.5


def test_user_module_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_metric(str(tmp_path / "missing_metric.py"))
    with pytest.raises(UserError, match="does not exist"):
        load_metric("./no/such/metric")
    empty = tmp_path / "empty_metric"
    empty.mkdir()
    with pytest.raises(UserError, match="has no empty_metric.py"):
        load_metric(str(empty))
    broken = tmp_path / "broken_metric.py"
    broken.write_text("import datasets\nimport evaluate\n\nclass Broken(evaluate.Metric:\n    pass\n")
    with pytest.raises(UserError, match="could not load metric"):
        load_metric(str(broken))
    text = tmp_path / "notes.txt"
    text.write_text("hi")
    with pytest.raises(UserError, match="not a .py file"):
        load_metric(str(text))


def test_metric_needing_references_without_them():
    with pytest.raises(UserError, match="needs references"):
        compute_metrics(["bleu"], ["a"], None)
    assert compute_metrics(["distinct"], ["a b", "a c"], None)["distinct"]["distinct_1"] == 0.75


# ------------------------------------------------------------------ BLEU, chrF


def test_bleu_equals_sacrebleu_corpus_bleu(modules):
    ours = modules["bleu"].compute(predictions=PREDICTIONS, references=REFERENCES)
    theirs = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES])
    assert ours["score"] == pytest.approx(theirs.score, abs=1e-12)
    assert ours["precisions"] == pytest.approx(theirs.precisions)
    assert (ours["sys_len"], ours["ref_len"]) == (theirs.sys_len, theirs.ref_len)
    assert ours["signature"] == f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{sacrebleu.__version__}"
    assert 0 < ours["score"] < 100


def test_bleu_kwargs_change_score_and_signature(modules):
    ours = modules["bleu"].compute(predictions=PREDICTIONS, references=REFERENCES, lowercase=True)
    theirs = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES], lowercase=True)
    assert ours["score"] == pytest.approx(theirs.score, abs=1e-12)
    assert "case:lc" in ours["signature"]


def test_chrf_equals_sacrebleu_corpus_chrf(modules):
    ours = modules["chrf"].compute(predictions=PREDICTIONS, references=REFERENCES)
    theirs = sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES])
    assert ours["score"] == pytest.approx(theirs.score, abs=1e-12)
    assert ours["signature"] == f"nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:{sacrebleu.__version__}"
    plus = modules["chrf"].compute(predictions=PREDICTIONS, references=REFERENCES, word_order=2)
    assert plus["score"] == pytest.approx(sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES], word_order=2).score)
    assert "nw:2" in plus["signature"]


def test_perfect_and_empty_predictions():
    assert _core.bleu(REFERENCES, REFERENCES)["score"] == pytest.approx(100.0)
    assert _core.chrf(REFERENCES, REFERENCES)["score"] == pytest.approx(100.0)
    assert _core.bleu(["", ""], ["a b c d", "e f g h"])["score"] == 0.0


# ------------------------------------------------------------------ ROUGE


def _rouge_reference(preds, refs, types, **kw):
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=False, **kw)
    per = [scorer.score(r, p) for p, r in zip(preds, refs)]
    return {t: float(np.mean([s[t].fmeasure for s in per])) for t in types}, per


def test_rouge_equals_rouge_score_mean_f1(modules):
    ours = modules["rouge"].compute(predictions=PREDICTIONS, references=REFERENCES)
    expected, per = _rouge_reference(PREDICTIONS, REFERENCES, ["rouge1", "rouge2", "rougeL"])
    for t in ("rouge1", "rouge2", "rougeL"):
        assert ours[t] == pytest.approx(expected[t], abs=1e-12)
        assert ours["per_example"][t] == pytest.approx([s[t].fmeasure for s in per], abs=1e-12)
    # Single-sentence texts: rougeLsum == rougeL per example.
    assert ours["per_example"]["rougeLsum"][0] == pytest.approx(ours["per_example"]["rougeL"][0])
    assert ours["signature"].startswith("f1|agg:mean|tok:default|stem:no|lsum:sentences|")
    # Deterministic (no BootstrapAggregator sampling).
    again = modules["rouge"].compute(predictions=PREDICTIONS, references=REFERENCES)
    assert again == ours


def test_rouge_lsum_splits_sentences(modules):
    pred, ref = "a b. c d.", "c d. a b."
    ours = modules["rouge"].compute(predictions=[pred], references=[ref])
    assert ours["rougeL"] == pytest.approx(0.5)  # LCS of [a b c d] and [c d a b] is 2 tokens
    assert ours["rougeLsum"] == pytest.approx(1.0)  # every reference sentence is recovered
    scorer = rouge_scorer.RougeScorer(["rougeLsum"])
    assert ours["rougeLsum"] == pytest.approx(scorer.score("c d.\na b.", "a b.\nc d.")["rougeLsum"].fmeasure)


def test_split_sentences_handles_curly_quotes():
    text = "He said, “Go.” Then he left! Did he? ‘Yes.’ End"
    assert _core.split_sentences(text).split("\n") == ["He said, “Go.”", "Then he left!", "Did he?", "‘Yes.’", "End"]
    assert _core.split_sentences("one.\ntwo") == "one.\ntwo"


def test_rouge_tokenization_of_quotes_and_non_ascii():
    # Curly and straight apostrophes tokenize alike under rouge-score's default tokenizer.
    curly = _core.rouge_per_example(["God’s word"], ["God's word"])
    assert curly["rouge1"] == [1.0]
    # ...which drops non-ASCII letters: "Judæa" becomes "jud a", so it matches "Jud a" exactly.
    assert _core.rouge_per_example(["Judæa"], ["Jud a"])["rouge1"] == [1.0]
    assert _core.rouge_per_example(["Ελλάδα"], ["Ελλάδα"])["rouge1"] == [0.0]
    # The opt-in Unicode tokenizer keeps letters of any script.
    assert _core.rouge_per_example(["Ελλάδα"], ["Ελλάδα"], tokenizer="unicode")["rouge1"] == [1.0]
    assert _core.UnicodeTokenizer().tokenize("God’s Judæa, “café”") == ["god", "s", "judæa", "café"]


# ------------------------------------------------------------------ diversity, exact match


def test_distinct_hand_computed(modules):
    # unigrams: a b a | a b c -> 6 total, {a, b, c} -> 3/6; bigrams: ab ba | ab bc -> 4 total, 3 unique.
    out = modules["distinct"].compute(predictions=["a b a", "a b c"])
    assert out["distinct_1"] == pytest.approx(0.5)
    assert out["distinct_2"] == pytest.approx(0.75)
    assert (out["unique_1"], out["total_1"], out["unique_2"], out["total_2"]) == (3, 6, 3, 4)
    # Corpus level, not a mean of per-sentence ratios (which would be (2/3 + 1) / 2 for distinct-1).
    assert out["distinct_1"] != pytest.approx((2 / 3 + 1) / 2)
    # Case-sensitive whitespace tokens; short and empty predictions contribute no n-grams.
    out = _core.distinct(["The the", "x", ""])
    assert (out["distinct_1"], out["unique_2"], out["total_2"]) == (1.0, 1, 1)
    assert _core.distinct(["x", ""])["distinct_2"] == 0.0


def test_self_bleu_hand_computed(modules):
    # "a b c d" vs "a b c e": precisions 3/4, 2/3, 1/2, and 0/1 smoothed to 1/(2*1); BP 1; symmetric.
    expected = (75 * (200 / 3) * 50 * 50) ** 0.25
    out = modules["self_bleu"].compute(predictions=["a b c d", "a b c e"])
    assert out["self_bleu"] == pytest.approx(expected)
    assert out["self_bleu"] == pytest.approx(59.460355750136)
    assert out["n_sampled"] == 2 and "self-bleu|sample:2|seed:1234|nrefs:1|" in out["signature"]
    assert _core.self_bleu(["a b c d"] * 3)["self_bleu"] == pytest.approx(100.0)
    assert _core.self_bleu(["a b c d", "e f g h"])["self_bleu"] == 0.0
    assert _core.self_bleu(["only one"])["self_bleu"] is None


def test_self_bleu_equals_sacrebleu_sentence_bleu_against_others():
    preds = [r.replace("him", "them") if i % 3 else r for i, r in enumerate(REFERENCES * 3)] + ["", "a a a a a"]
    bleu = BLEU(effective_order=True)
    naive = np.mean([bleu.sentence_score(p, preds[:i] + preds[i + 1 :]).score for i, p in enumerate(preds)])
    assert _core.self_bleu(preds)["self_bleu"] == pytest.approx(naive, abs=1e-9)


def test_self_bleu_sample_is_capped_and_seeded():
    preds = [f"sentence number {i} of {i % 7} things" for i in range(50)]
    a = _core.self_bleu(preds, max_samples=10, seed=1)
    assert a["n_sampled"] == 10 and a == _core.self_bleu(preds, max_samples=10, seed=1)
    idx = _core._sample_indices(50, 10, seed=1)
    bleu = BLEU(effective_order=True)
    sample = [preds[i] for i in idx]
    naive = np.mean([bleu.sentence_score(p, sample[:i] + sample[i + 1 :]).score for i, p in enumerate(sample)])
    assert a["self_bleu"] == pytest.approx(naive, abs=1e-9)
    assert _core._sample_indices(50, 10, seed=2) != idx


def test_exact_match(modules):
    out = modules["exact_match"].compute(predictions=[" yes\n", "No", "x", ""], references=["yes", "no", "x", " "])
    assert out == {"exact_match": 0.75, "matches": 3, "total": 4}


def test_registry_lists_every_shipped_module_and_the_rows_it_computes(modules):
    """metrics/registry.py is the one list: every module directory shipped in textgen_cli/metrics/ is
    registered, `scores.metric_rows` turns each module's result into exactly its registered rows,
    and every interval row has a fast bootstrap."""
    from pathlib import Path

    import textgen_cli.metrics as package
    from textgen_cli.evaluation.scores import metric_rows
    from textgen_cli.metrics import BOOTSTRAP_METRICS
    from textgen_cli.metrics.registry import INTERVAL_ROWS, ROWS

    here = Path(package.__file__).parent
    shipped = {d.name for d in here.iterdir() if (d / f"{d.name}.py").is_file()}
    assert shipped == set(METRIC_NAMES)
    rows, signatures = metric_rows(compute_metrics(list(METRIC_NAMES), PREDICTIONS, REFERENCES))
    assert list(rows) == [
        row.name for row in sorted((r for r in ROWS if r.module), key=lambda r: METRIC_NAMES.index(r.module))
    ]
    assert set(signatures) == {row for row in rows if not row.startswith("exact_match")}
    assert rows["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score)
    assert set(INTERVAL_ROWS) <= set(BOOTSTRAP_METRICS) and set(INTERVAL_ROWS) <= set(rows)


def test_compute_metrics_returns_signatures(modules):
    results = compute_metrics(list(METRIC_NAMES), PREDICTIONS, REFERENCES)
    assert list(results) == list(METRIC_NAMES)
    for name in ("bleu", "chrf", "rouge", "distinct", "self_bleu"):
        assert isinstance(results[name]["signature"], str)
    assert results["bleu"]["score"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score)
    with pytest.raises(ValueError):
        compute_metrics(["bleu"], PREDICTIONS, REFERENCES[:-1])


# ------------------------------------------------------------------ bootstrap


def _system(n=300, seed=0):
    """A synthetic test set of n examples and two systems, B a noisier copy of A."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(60)] + ["“quoted”", "café", "’s"]
    refs, a, b = [], [], []
    for _ in range(n):
        ref = [vocab[i] for i in rng.integers(0, len(vocab), size=rng.integers(5, 25))]
        refs.append(" ".join(ref))
        a.append(" ".join(t if rng.random() > 0.2 else vocab[0] for t in ref))
        b.append(" ".join(t if rng.random() > 0.5 else vocab[1] for t in ref))
    return a, b, refs


@pytest.mark.parametrize("metric", ["bleu", "chrf", "rougeL"])
def test_bootstrap_contains_point_and_is_seeded(metric):
    a, _, refs = _system()
    r = paired_bootstrap(metric, a, None, refs, n_resamples=1000, seed=7)
    assert r["low"] < r["score"] < r["high"]
    assert r == paired_bootstrap(metric, a, None, refs, n_resamples=1000, seed=7)
    other = paired_bootstrap(metric, a, None, refs, n_resamples=1000, seed=8)
    assert (other["low"], other["high"]) != (r["low"], r["high"])
    point = {
        "bleu": lambda: _core.bleu(a, refs)["score"],
        "chrf": lambda: _core.chrf(a, refs)["score"],
        "rougeL": lambda: _core.rouge(a, refs, ["rougeL"])["rougeL"],
    }[metric]()
    assert r["score"] == pytest.approx(point, abs=1e-9)


def test_bootstrap_resamples_match_corpus_recomputation():
    """The fast path (summed sacrebleu statistics) equals re-running corpus BLEU on each resample."""
    a, _, refs = _system(n=40)
    fast = paired_bootstrap("bleu", a, None, refs, n_resamples=30, seed=3)
    slow = paired_bootstrap(lambda p, r: sacrebleu.corpus_bleu(p, [r]).score, a, None, refs, n_resamples=30, seed=3)
    assert (fast["low"], fast["high"]) == pytest.approx((slow["low"], slow["high"]), abs=1e-9)
    fast = paired_bootstrap("rougeL", a, None, refs, n_resamples=30, seed=3)
    slow = paired_bootstrap(lambda p, r: _core.rouge(p, r, ["rougeL"])["rougeL"], a, None, refs, n_resamples=30, seed=3)
    assert (fast["low"], fast["high"]) == pytest.approx((slow["low"], slow["high"]), abs=1e-12)


def test_bootstrap_interval_is_the_percentile_interval():
    a, _, refs = _system(n=30)
    seen = []

    def recording(p, r):
        seen.append(_core.exact_match(p, r)["exact_match"] + len(set(p)) / 1000)
        return seen[-1]

    r = paired_bootstrap(recording, a, None, refs, n_resamples=200, seed=11, confidence=0.95)
    assert seen[0] == r["score"] and len(seen) == 201  # the full set first, then each resample
    assert (r["low"], r["high"]) == pytest.approx(tuple(np.quantile(seen[1:], [0.025, 0.975])))
    narrow = paired_bootstrap("chrf", a, None, refs, confidence=0.80)
    wide = paired_bootstrap("chrf", a, None, refs, confidence=0.95)
    assert wide["low"] < narrow["low"] < narrow["high"] < wide["high"]


def test_paired_bootstrap_identical_systems_difference_is_zero():
    a, _, refs = _system()
    r = paired_bootstrap("bleu", a, list(a), refs)
    assert r["diff"]["score"] == 0.0
    assert r["diff"]["low"] <= 0.0 <= r["diff"]["high"]
    assert (r["diff"]["low"], r["diff"]["high"]) == (0.0, 0.0)
    assert r["ties"] == 1.0 and r["a_wins"] == 0.0
    assert (r["n_resamples"], r["seed"], r["confidence"]) == (1000, 1234, 0.95)


@pytest.mark.parametrize("metric", ["bleu", "chrf", "rougeL"])
def test_paired_bootstrap_detects_better_system(metric):
    a, b, refs = _system()
    r = paired_bootstrap(metric, a, b, refs)
    assert r["a"]["score"] > r["b"]["score"]
    assert r["diff"]["score"] == pytest.approx(r["a"]["score"] - r["b"]["score"])
    assert 0 < r["diff"]["low"] < r["diff"]["score"] < r["diff"]["high"]
    assert r["a_wins"] > 0.99
    swapped = paired_bootstrap(metric, b, a, refs)
    assert swapped["b_wins"] == r["a_wins"]
    assert swapped["diff"]["low"] == pytest.approx(-r["diff"]["high"])


def test_paired_bootstrap_close_systems_overlap_zero():
    a, _, refs = _system(seed=1)
    rng = np.random.default_rng(5)
    b = [p if rng.random() > 0.05 else " ".join(p.split()[::-1]) for p in a]
    c = [p if rng.random() > 0.05 else " ".join(p.split()[::-1]) for p in a]
    r = paired_bootstrap("chrf", b, c, refs)
    assert r["diff"]["low"] < 0 < r["diff"]["high"]
    assert 0 < r["a_wins"] < 1


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError):
        paired_bootstrap("bleu", ["a"], None, ["a", "b"])
    with pytest.raises(ValueError):
        paired_bootstrap("meteor", ["a"], None, ["a"])
    with pytest.raises(ValueError):
        paired_bootstrap("bleu", ["a"], None, ["a"], confidence=1.0)


# ------------------------------------------------------------------ likelihood


def test_perplexity_and_bits_per_byte():
    assert perplexity(0.0, 10) == 1.0
    assert perplexity(10 * math.log(50), 10) == pytest.approx(50.0)
    assert perplexity(1e6, 1) == math.inf
    # 8 bits of surprise per byte: a uniform distribution over 256 byte values.
    assert bits_per_byte(100 * 8 * math.log(2), 100) == pytest.approx(8.0)
    assert utf8_bytes("“a’") == 7
    with pytest.raises(ValueError):
        perplexity(1.0, 0)
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 0)
    with pytest.raises(ValueError):
        bits_per_byte(-1.0, 3)


def test_likelihood_totals_sum_tokens_not_batch_means():
    batches = [(2.0, 1, 4), (30.0, 10, 40)]  # (summed NLL, tokens, bytes)
    totals = LikelihoodTotals()
    for nll, tokens, n_bytes in batches:
        totals.add(nll, tokens, n_bytes)
    out = totals.result()
    assert out["nll_per_token"] == pytest.approx(32.0 / 11)
    assert out["perplexity"] == pytest.approx(math.exp(32.0 / 11))
    mean_of_means = np.mean([nll / t for nll, t, _ in batches])
    assert out["perplexity"] != pytest.approx(math.exp(mean_of_means))
    assert out["bits_per_byte"] == pytest.approx(32.0 / (math.log(2) * 44))


# ------------------------------------------------------------------------------------ sanity checks


def test_distinct_outputs_share_counts_first_output_per_distinct_source():
    from textgen_cli.metrics.checks import distinct_outputs_share

    # one output for four sources (the source "a" repeats): 1 of 3 distinct sources
    assert distinct_outputs_share(["a", "b", "c", "a"], ["x", "x", "x", "y"]) == pytest.approx(1 / 3)
    assert distinct_outputs_share(["a", "b", "c"], ["x", "y", "z"]) == 1.0
    with pytest.raises(ValueError):
        distinct_outputs_share(["a"], [])


def test_repeated_ngram_rate_hand_computed():
    from textgen_cli.metrics.checks import repeated_ngram_rate

    # 6 words -> 3 four-grams, all distinct; a loop of "and the lord" x3 (9 words): 6 four-grams, 3 distinct
    assert repeated_ngram_rate(["one two three four five six"]) == 0.0
    assert repeated_ngram_rate(["and the Lord and the Lord and the Lord"]) == pytest.approx(3 / 6)
    assert repeated_ngram_rate(["short", ""]) == 0.0
    assert repeated_ngram_rate(["a b a b a b"], n=2) == pytest.approx(3 / 5)


def student_t_two_sided_by_integration(t: float, df: float, steps: int = 200_000) -> float:
    """2 * integral of the Student-t density from |t| to a far bound (Simpson), independent of textgen."""
    const = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    a, b = abs(t), abs(t) + 2000.0
    h = (b - a) / steps

    def f(x: float) -> float:
        return const * (1 + x * x / df) ** (-(df + 1) / 2)

    total = f(a) + f(b) + sum((4 if i % 2 else 2) * f(a + i * h) for i in range(1, steps))
    return 2 * total * h / 3


def test_welch_t_test_matches_numeric_integration():
    from textgen_cli.metrics.checks import _t_sf, welch_t_test

    # equal variances and sizes: t = -2 / sqrt(2 * (5/3) / 4) = -2.19 on df = 6
    result = welch_t_test([1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 5.0, 6.0])
    assert result["t"] == pytest.approx(-2 / math.sqrt(5 / 3 / 2), rel=1e-12)
    assert result["df"] == pytest.approx(6.0)
    assert result["p"] == pytest.approx(student_t_two_sided_by_integration(result["t"], 6.0), rel=1e-6)
    # unequal variances: fractional degrees of freedom (Welch-Satterthwaite)
    result = welch_t_test([10.1, 10.3, 9.9], [11.0, 12.5, 13.1, 11.7])
    assert 2 < result["df"] < 5 and result["df"] != int(result["df"])
    assert result["p"] == pytest.approx(student_t_two_sided_by_integration(result["t"], result["df"]), rel=1e-5)
    # t(1) is Cauchy: P(T > 1) = 1/4; t_{0.975, 10} = 2.228139
    assert _t_sf(1.0, 1.0) == pytest.approx(0.25, rel=1e-9)
    assert _t_sf(2.228138851986, 10.0) == pytest.approx(0.025, rel=1e-6)
    assert welch_t_test([1.0, 1.0], [2.0, 2.0])["p"] == 0.0
    with pytest.raises(ValueError):
        welch_t_test([1.0], [2.0, 3.0])


def test_nearest_prompt_is_tfidf_cosine_and_deterministic():
    from textgen_cli.metrics.checks import NearestPrompt

    index = NearestPrompt(["How are you?", "Where is the ship?", "Where is the harbour?", "Hello!"])
    assert index.nearest("where is the SHIP today") == 1
    assert index.nearest("are you well") == 0
    assert index.nearest("Where is the") == 1  # a tie goes to the lowest index
    assert index.nearest("zzz") == 0  # nothing in common


def test_verdict_flags_each_failure_and_passes_a_good_model():
    from textgen_cli.evaluation.verdict import judge, verdict_lines

    thresholds = {"min_input_gap": 0.1, "min_distinct_outputs": 0.5, "max_repetition_excess": 0.2}
    good = {
        "baselines": [
            {
                "label": "copy source",
                "versus": {
                    "bleu": {"diff": 3.0, "low": 1.0, "high": 5.0},
                    "chrf": {"diff": 2.0, "low": 0.5, "high": 3.5},
                },
            }
        ],
        "input_use": {"examples": 64, "bits_per_byte_true": 1.2, "bits_per_byte_shuffled": 1.9, "gap": 0.7},
        "degeneration": {
            "distinct_outputs_share": 0.97,
            "repeated_4gram_rate": 0.01,
            "reference_repeated_4gram_rate": 0.0,
        },
    }
    verdict = judge(good, thresholds)
    assert verdict["ok"] and verdict["flags"] == []
    assert verdict_lines("m", verdict)[0].startswith("m: OK (not below copy source on BLEU and chrF; uses its input")
    broken = {
        "baselines": [
            {
                "label": "copy source",
                "versus": {
                    "bleu": {"diff": -36.0, "low": -38.0, "high": -34.0},
                    "chrf": {"diff": -1.0, "low": -3.0, "high": 1.0},
                },
            }
        ],
        "input_use": {"examples": 64, "bits_per_byte_true": 1.794, "bits_per_byte_shuffled": 1.794, "gap": 0.0},
        "degeneration": {
            "distinct_outputs_share": 1 / 300,
            "repeated_4gram_rate": 0.6,
            "reference_repeated_4gram_rate": 0.01,
        },
    }
    verdict = judge(broken, thresholds)
    assert not verdict["ok"]
    text = "\n".join(verdict_lines("m", verdict))
    assert "m: FLAGGED" in text
    # below only where the whole interval is below: chrF's gap is inside the noise, a tie
    assert "below the copy source baseline: BLEU -36.00 [-38.00, -34.00]\n" in text
    assert "ties the copy source baseline within the noise: chrF -1.00 [-3.00, +1.00]" in verdict["passed"]
    assert (
        "ignores its input: reference bits per byte 1.794 with its own sources, 1.794 with shuffled ones (gap 0.000, 64 examples)"
        in text
    )
    assert "degenerate: distinct outputs for only 0% of distinct sources" in text
    assert "degenerate: repeats itself (60% of 4-grams" in text


def test_bits_per_byte_gap_interval_recomputes_the_ratio_of_resampled_sums():
    """Each resample's gap is (sum of other - own NLL) / (ln 2 x sum of bytes) over the drawn
    examples, not a mean of per-example gaps; the interval is their percentile interval, seeded."""
    from textgen_cli.metrics import bits_per_byte_gap_interval

    rng = np.random.default_rng(5)
    own = rng.uniform(10, 50, size=40)
    other = own + rng.normal(5, 3, size=40)
    n_bytes = rng.integers(20, 200, size=40)
    low, high = bits_per_byte_gap_interval(own, other, n_bytes, n_resamples=300, seed=9)
    draws = np.random.default_rng(9).integers(0, 40, size=(300, 40))
    by_hand = [(other[d] - own[d]).sum() / (math.log(2) * n_bytes[d].sum()) for d in draws]
    assert (low, high) == pytest.approx(tuple(np.quantile(by_hand, [0.025, 0.975])))
    point = (other - own).sum() / (math.log(2) * n_bytes.sum())
    assert low < point < high
    assert (low, high) == bits_per_byte_gap_interval(own, other, n_bytes, n_resamples=300, seed=9)
    # a source that changes nothing: a zero-width interval at zero
    assert bits_per_byte_gap_interval(own, own, n_bytes, n_resamples=50) == (0.0, 0.0)
    with pytest.raises(ValueError):
        bits_per_byte_gap_interval(own, other[:-1], n_bytes)


def test_two_level_bits_per_byte_point_and_seed_noise():
    """The point is the mean over seeds of each seed's ratio of sums; identical arms differ by zero;
    with one seed per arm it is the paired bootstrap of the ratio over examples; seeds that disagree
    widen the interval (the training noise), and it is seeded."""
    from textgen_cli.metrics import bits_per_byte_gap_interval, two_level_bits_per_byte

    rng = np.random.default_rng(3)
    n_bytes = rng.integers(20, 200, size=50)
    base = rng.uniform(0.5, 1.5, size=50) * n_bytes  # about 1 nat a byte

    def arm(*scales):
        return [(base * s, n_bytes) for s in scales]

    out = two_level_bits_per_byte(arm(1.0, 1.2), arm(1.1), n_resamples=400, seed=4)
    by_hand = np.mean([(base * s).sum() / (math.log(2) * n_bytes.sum()) for s in (1.0, 1.2)])
    assert out["a"]["score"] == pytest.approx(by_hand)
    assert out["diff"]["score"] == pytest.approx(by_hand - (base * 1.1).sum() / (math.log(2) * n_bytes.sum()))
    same = two_level_bits_per_byte(arm(1.0), arm(1.0), n_resamples=100)
    assert (same["diff"]["low"], same["diff"]["high"]) == (0.0, 0.0)
    # one seed per arm: the interval of A - B is the gap interval with B as "own" and A as "other"
    one = two_level_bits_per_byte(arm(1.0), arm(1.2), n_resamples=300, seed=9)
    low, high = bits_per_byte_gap_interval(base * 1.2, base, n_bytes, n_resamples=300, seed=9)
    assert (one["diff"]["low"], one["diff"]["high"]) == pytest.approx((low, high))
    steady = two_level_bits_per_byte(arm(1.1, 1.1), arm(1.0, 1.0), n_resamples=400, seed=4)
    shaky = two_level_bits_per_byte(arm(1.3, 0.9), arm(1.0, 1.0), n_resamples=400, seed=4)
    assert shaky["diff"]["high"] - shaky["diff"]["low"] > 2 * (steady["diff"]["high"] - steady["diff"]["low"])
    assert out == two_level_bits_per_byte(arm(1.0, 1.2), arm(1.1), n_resamples=400, seed=4)
    with pytest.raises(ValueError):
        two_level_bits_per_byte(arm(1.0), [(base[:-1], n_bytes[:-1])])
