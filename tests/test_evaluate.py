"""`textgen evaluate` through the installed entry point, on the session's tiny trained runs (conftest).

The conftest recipes have no test split, so this module writes recipes beside them that add one (and
small decoding / bootstrap settings) and name the same runs: the models are trained once per session
and shared with test_end_to_end. Every score in eval.json is checked against sacrebleu / rouge-score
run by hand on the written predictions.jsonl.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conftest import trained_run
from harness import FAMILIES, SHIPPED, moby_lines, ok, textgen, usage_error

pytestmark = pytest.mark.slow

N_TEST = 24
ROWS = (
    "bleu",
    "chrf",
    "rouge1",
    "rouge2",
    "rougeL",
    "rougeLsum",
    "distinct_1",
    "distinct_2",
    "self_bleu",
    "exact_match",
)
SIGNED = ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "rougeLsum", "distinct_1", "distinct_2", "self_bleu")
INTERVALS = ("bleu", "chrf", "rougeL")
LIKELIHOOD = ("nll_sum", "tokens", "bytes", "perplexity", "bits_per_byte")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def by_hand(predictions: list[str], references: list[str]) -> dict[str, float]:
    """sacrebleu's corpus BLEU / chrF and rouge-score's per-example F1 mean, computed independently."""
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
    return {
        "bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
        "chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
        **{row: sum(s[row].fmeasure for s in scores) / len(scores) for row in ("rouge1", "rouge2", "rougeL")},
    }


def assert_scores_match(metrics: dict[str, float], predictions: list[str], references: list[str]) -> None:
    expected = by_hand(predictions, references)
    for row, value in expected.items():
        assert metrics[row] == pytest.approx(value, abs=1e-9), row


def perturbable(source: str) -> bool:
    """At least 6 words a char perturbation may touch, so that rate 0.1 changes one (round(0.6) = 1)."""
    return sum(word.isalpha() and len(word) >= 4 for word in source.split()) >= 6


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def space(workspace) -> Path:
    """Beside the conftest recipes: a test split, recipes that evaluate the conftest runs, a user's
    metric module, a tiny dialogue task. Everything is prefixed `evaltest-`."""
    root = workspace / "recipe"
    rows = [
        json.loads(line)
        for line in (SHIPPED / "data" / "bible-modern" / "test.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    # short enough for a 64-token context (references are scored whole), long enough to be perturbed
    rows = [r for r in rows if perturbable(r["source"]) and len(r["source"]) <= 110 and len(r["target"]) <= 110]
    rows.sort(key=lambda r: len(r["source"]) + len(r["target"]))
    assert len(rows) >= N_TEST
    (root / "data" / "evaltest-test.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:N_TEST]), encoding="utf-8"
    )
    for family in FAMILIES:
        values = yaml.safe_load((root / f"tiny-{family}.yaml").read_text(encoding="utf-8"))
        values["data"]["finetune"]["test"] = "data/evaltest-test.jsonl"
        values["run"] = {"name": f"tiny-{family}"}  # the conftest run, trained once per session
        values["generate"] = {"max_new_tokens": 16}
        values["eval"] = {"bootstrap": 200}
        (root / f"evaltest-{family}.yaml").write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")

    # a user's evaluate module, named in eval.metrics by a path relative to the recipe file
    (root / "evaltest_metrics").mkdir(exist_ok=True)
    (root / "evaltest_metrics" / "mean_chars.py").write_text(USER_METRIC, encoding="utf-8")
    values = yaml.safe_load((root / "evaltest-chatgpt.yaml").read_text(encoding="utf-8"))
    values["eval"] = {"bootstrap": 50, "metrics": ["bleu", "evaltest_metrics/mean_chars.py"]}
    (root / "evaltest-user-metric.yaml").write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")

    # a dialogue task: "I am fine, thanks." is the most frequent training response (3 of 8 turns)
    write_jsonl(root / "data" / "evaltest-dialogue-train.jsonl", DIALOGUE_TRAIN)
    write_jsonl(root / "data" / "evaltest-dialogue-test.jsonl", DIALOGUE_TEST)
    values = yaml.safe_load((root / "evaltest-chatgpt.yaml").read_text(encoding="utf-8"))
    values["data"]["finetune"] = {
        "task": "dialogue",
        "train": "data/evaltest-dialogue-train.jsonl",
        "validation": "data/evaltest-dialogue-train.jsonl",
        "test": "data/evaltest-dialogue-test.jsonl",
    }
    values["eval"] = {"bootstrap": 50}
    values["run"] = {"name": "evaltest-dialogue"}
    (root / "evaltest-dialogue.yaml").write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return workspace


USER_METRIC = '''
"""A user's metric: mean characters of the predictions and of the sources."""

import datasets
import evaluate


class MeanChars(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="mean characters",
            citation="",
            features=datasets.Features({"predictions": datasets.Value("string"), "sources": datasets.Value("string")}),
        )

    def _compute(self, predictions, sources):
        return {
            "prediction_chars": sum(len(p) for p in predictions) / len(predictions),
            "source_chars": sum(len(s) for s in sources) / len(sources),
        }
'''


def chat(*turns: str) -> dict:
    return {
        "messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": text} for i, text in enumerate(turns)]
    }


DIALOGUE_TRAIN = [
    chat("Hello!", "Hi there."),
    chat("How are you?", "I am fine, thanks."),
    chat("Good morning.", "Good morning to you.", "How are you?", "I am fine, thanks."),
    chat("What is new?", "Not much, really."),
    chat("Are you well?", "I am fine, thanks."),
    chat("Hello again!", "Hi there."),
]
DIALOGUE_TEST = [
    chat("Hello!", "Hello, friend.", "How are you today?", "I am well, thank you."),
    chat("Do you like the sea?", "Yes, I love the sea."),
    chat("Where is the ship?", "It sailed this morning."),
    chat("Good evening.", "Good evening.", "Is it cold?", "It is cold and windy."),
    chat("Are you tired?", "I am fine, thanks."),
]


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps({"id": f"d{i}", **r}) + "\n" for i, r in enumerate(records)), encoding="utf-8")


@pytest.fixture(scope="module", params=FAMILIES)
def evaluated(request, space):
    """`textgen evaluate --recipe R --json` on the family's finetuned run."""
    family = request.param
    run = trained_run(space, family)
    ok(run.finetune)
    result = ok(textgen(["evaluate", "--recipe", f"recipe/evaltest-{family}.yaml", "--json"], cwd=space))
    return family, run.stage_dir("finetune"), result


def test_writes_eval_json_and_predictions_beside_the_model(evaluated, space):
    family, folder, result = evaluated
    report = json.loads(result.stdout)  # --json: the whole report, parseable, logs on stderr
    assert (folder / "eval.json").is_file() and (folder / "predictions.jsonl").is_file()
    assert json.loads((folder / "eval.json").read_text(encoding="utf-8")) == report
    assert report["family"] == family and report["stage"] == "finetune" and report["split"] == "test"
    # paths as the user gave them: relative ones are relative to the folder evaluate ran in
    assert (space / report["model"]).resolve() == (folder / "final").resolve()
    assert (space / report["files"]["eval"]).resolve() == (folder / "eval.json").resolve()
    assert (space / report["files"]["predictions"]).resolve() == (folder / "predictions.jsonl").resolve()


def test_eval_json_has_every_metric_signature_interval_and_setting(evaluated, space):
    _, folder, _ = evaluated
    report = json.loads((folder / "eval.json").read_text(encoding="utf-8"))
    test = read_jsonl(space / "recipe" / "data" / "evaltest-test.jsonl")
    assert report["n_examples"] == N_TEST == len(read_jsonl(folder / "predictions.jsonl"))
    assert report["task"] == "pairs"
    for row in ROWS:
        assert isinstance(report["metrics"][row], float) and math.isfinite(report["metrics"][row]), row
    import sacrebleu

    for row in SIGNED:
        assert report["signatures"][row], row
    assert (
        report["signatures"]["bleu"] == f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{sacrebleu.__version__}"
    )
    assert report["signatures"]["chrf"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0")
    assert report["decoding"]["max_new_tokens"] == 16 and report["decoding"]["do_sample"] is False
    assert report["bootstrap"]["resamples"] == 200
    for row in INTERVALS:
        bound = report["intervals"][row]
        assert bound["low"] <= bound["high"], row
    # chrF sums character statistics: its percentile interval brackets the full-set score
    assert report["intervals"]["chrf"]["low"] <= report["metrics"]["chrf"] <= report["intervals"]["chrf"]["high"]

    predictions = read_jsonl(folder / "predictions.jsonl")
    assert [p["id"] for p in predictions] == [t["id"] for t in test]
    assert [p["source"] for p in predictions] == [t["source"] for t in test]
    assert [p["reference"] for p in predictions] == [t["target"] for t in test]
    assert all(isinstance(p["prediction"], str) for p in predictions)


def test_scores_match_sacrebleu_and_rouge_score_by_hand(evaluated):
    _, folder, _ = evaluated
    report = json.loads((folder / "eval.json").read_text(encoding="utf-8"))
    rows = read_jsonl(folder / "predictions.jsonl")
    references = [r["reference"] for r in rows]
    assert_scores_match(report["metrics"], [r["prediction"] for r in rows], references)
    # the copy-the-source baseline gives non-trivial scores, checked the same way
    assert report["baseline"]["name"] == "copy source"
    assert_scores_match(report["baseline"]["metrics"], [r["source"] for r in rows], references)
    assert report["baseline"]["metrics"]["bleu"] > 10  # really scored, not zeros


def test_model_minus_baseline(evaluated):
    _, folder, _ = evaluated
    report = json.loads((folder / "eval.json").read_text(encoding="utf-8"))
    versus = report["baseline"]["versus"]
    for row in INTERVALS:
        expected = report["metrics"][row] - report["baseline"]["metrics"][row]
        assert versus[row]["diff"] == pytest.approx(expected, abs=1e-9), row
        assert versus[row]["low"] <= versus[row]["high"]
        assert 0.0 <= versus[row]["model_wins"] <= 1.0
    assert [b["key"] for b in report["baselines"]] == ["copy_source"]
    assert report["baselines"][0]["versus"] == versus


def test_input_use_degeneration_and_verdict(evaluated):
    """The input-use check scores the references with true and rotated sources; the degeneration
    statistics are recomputed by hand from predictions.jsonl; the verdict follows from them."""
    from textgen_cli.metrics.checks import repeated_ngram_rate

    _, folder, _ = evaluated
    report = json.loads((folder / "eval.json").read_text(encoding="utf-8"))
    use = report["input_use"]
    assert use["examples"] == N_TEST  # eval.input_check (128) caps nothing here
    # the check scores one reference at a time, the likelihood row in padded batches: float noise only
    assert use["bits_per_byte_true"] == pytest.approx(report["likelihood"]["bits_per_byte"], rel=1e-6)
    assert use["bits_per_byte_shuffled"] != use["bits_per_byte_true"]
    assert use["gap"] == pytest.approx(use["bits_per_byte_shuffled"] - use["bits_per_byte_true"], abs=1e-12)
    assert use["gap_low"] < use["gap"] < use["gap_high"]  # the bootstrap interval over the examples
    rows = read_jsonl(folder / "predictions.jsonl")
    # each scored reference's NLLs are kept per example: the summary is their ratio of sums
    scored = [r for r in rows if "reference_nll" in r]
    assert len(scored) == use["examples"]
    n_bytes = sum(r["reference_bytes"] for r in scored)
    assert use["bits_per_byte_true"] == pytest.approx(sum(r["reference_nll"] for r in scored) / (math.log(2) * n_bytes))
    assert use["bits_per_byte_shuffled"] == pytest.approx(
        sum(r["reference_nll_shuffled"] for r in scored) / (math.log(2) * n_bytes)
    )
    predictions = [r["prediction"] for r in rows]
    degeneration = report["degeneration"]
    assert degeneration["distinct_outputs"] == len(set(predictions))
    assert degeneration["distinct_outputs_share"] == pytest.approx(
        min(1.0, len(set(predictions)) / len({r["source"] for r in rows}))
    )
    assert degeneration["repeated_4gram_rate"] == pytest.approx(repeated_ngram_rate(predictions))
    verdict = report["verdict"]
    # a 30-step tiny model is far below copy-source: flagged, with the reason
    assert verdict["ok"] is False
    assert any(flag.startswith("below the copy source baseline: BLEU -") for flag in verdict["flags"])
    assert (use["gap"] < 0.1) == any(flag.startswith("ignores its input") for flag in verdict["flags"])
    assert (use["gap"] >= 0.1 and use["gap_low"] <= 0) == any(
        flag.startswith("may ignore its input") for flag in verdict["flags"]
    )
    assert verdict["thresholds"] == {"min_input_gap": 0.1, "min_distinct_outputs": 0.5, "max_repetition_excess": 0.2}


def test_two_evaluations_of_one_stage_coexist(evaluated, space):
    """Another test file and fewer examples: a record of its own under evals/<eval hash>/; the stage's
    default evaluation (made first, by the fixture) is untouched; evaluate says where it wrote."""
    family, folder, _ = evaluated
    default = {name: (folder / name).read_bytes() for name in ("eval.json", "predictions.jsonl")}
    other = space / "recipe" / "data" / f"evaltest-other-{family}.jsonl"
    other.write_text(
        "".join(json.dumps(r) + "\n" for r in read_jsonl(space / "recipe" / "data" / "evaltest-test.jsonl")[::-1][:6]),
        encoding="utf-8",
    )
    args = [
        f"data.finetune.test=recipe/data/{other.name}",
        "eval.max_examples=5",
        "eval.metrics=[bleu]",
        "eval.bootstrap=10",
        "eval.input_check=4",
    ]
    result = ok(textgen(["evaluate", "--recipe", f"recipe/evaltest-{family}.yaml", *args, "--json"], cwd=space))
    report = json.loads(result.stdout)
    record = folder / "evals" / report["eval_hash"]
    assert (space / report["files"]["eval"]).resolve() == (record / "eval.json").resolve()
    assert json.loads((record / "eval.json").read_text(encoding="utf-8"))["n_examples"] == 5
    assert len(read_jsonl(record / "predictions.jsonl")) == 5
    assert (
        f"evaluate: wrote {report['files']['eval']} (a separate record; the stage's default evaluation is untouched)"
        in result.stderr
    )
    assert {name: (folder / name).read_bytes() for name in default} == default
    # the same evaluation again replaces its own record only
    again = json.loads(
        ok(textgen(["evaluate", "--recipe", f"recipe/evaltest-{family}.yaml", *args, "--json"], cwd=space)).stdout
    )
    assert again["files"]["eval"] == report["files"]["eval"]
    assert sorted(p.name for p in (folder / "evals").iterdir()) == [report["eval_hash"]]
    assert {name: (folder / name).read_bytes() for name in default} == default


def test_terminal_output_has_the_verdict_and_says_where_it_wrote(space, tmp_path):
    run = trained_run(space, "sora")
    ok(run.finetune)
    result = ok(
        textgen(
            [
                "evaluate",
                "--recipe",
                "recipe/evaltest-sora.yaml",
                "eval.metrics=[bleu,chrf]",
                "eval.bootstrap=20",
                "eval.input_check=8",
                "--output",
                str(tmp_path),
            ],
            cwd=space,
        )
    )
    out = " ".join(result.stdout.split())  # rich wraps long lines
    assert "verdict for tiny-sora finetune: FLAGGED, do not trust its ranking" in out
    assert "- below the copy source baseline: BLEU" in out
    assert "input-use gap (shuffled - own)" in out and "distinct outputs / distinct sources" in out
    assert f"evaluation written to {tmp_path / 'eval.json'}" in out
    assert json.loads((tmp_path / "eval.json").read_text(encoding="utf-8"))["input_use"]["examples"] == 8


def test_likelihood_bits_per_byte_and_perplexity(evaluated):
    _, folder, _ = evaluated
    lik = json.loads((folder / "eval.json").read_text(encoding="utf-8"))["likelihood"]
    for key in LIKELIHOOD:
        assert isinstance(lik[key], (int, float)) and lik[key] > 0, key
    assert lik.get("skipped_too_long", 0) == 0  # every test reference fits the context
    references = [r["reference"] for r in read_jsonl(folder / "predictions.jsonl")]
    assert lik["bytes"] == sum(len(r.encode("utf-8")) for r in references)
    assert lik["bytes"] != sum(len(r) for r in references)  # the data has curly quotes: bytes, not characters
    assert lik["bits_per_byte"] == pytest.approx(lik["nll_sum"] / math.log(2) / lik["bytes"], rel=1e-12)
    assert lik["perplexity"] == pytest.approx(math.exp(lik["nll_sum"] / lik["tokens"]), rel=1e-12)
    # an undertrained 400-token model: somewhere between certainty and uniform over the vocabulary
    assert 0 < lik["nll_sum"] / lik["tokens"] < math.log(400) + 0.5


def test_dialogue_baseline_is_the_most_frequent_training_response(space, tmp_path):
    model = trained_run(space, "chatgpt")
    ok(model.finetune)
    result = ok(
        textgen(
            [
                "evaluate",
                "--recipe",
                "recipe/evaltest-dialogue.yaml",
                "--model",
                str(model.stage_dir("finetune") / "final"),
                "--output",
                str(tmp_path),
                "--json",
            ],
            cwd=space,
        )
    )
    report = json.loads(result.stdout)
    counts = Counter(
        turn["content"] for record in DIALOGUE_TRAIN for turn in record["messages"] if turn["role"] == "assistant"
    )
    most, n = counts.most_common(1)[0]
    assert (most, n) == ("I am fine, thanks.", 3)
    assert report["task"] == "dialogue"
    assert most in report["baseline"]["name"]
    rows = read_jsonl(tmp_path / "predictions.jsonl")
    assert len(rows) == report["n_examples"] == len(DIALOGUE_TEST)
    references = [r["reference"] for r in rows]
    assert references == [d["messages"][-1]["content"] for d in DIALOGUE_TEST]
    # the source of a dialogue example is its history, ending with the user turn being answered
    assert [r["source"] for r in rows] == [d["messages"][:-1] for d in DIALOGUE_TEST]
    assert_scores_match(report["baseline"]["metrics"], [most] * len(rows), references)
    assert report["baseline"]["metrics"]["exact_match"] == pytest.approx(1 / len(DIALOGUE_TEST))
    assert_scores_match(report["metrics"], [r["prediction"] for r in rows], references)
    # the retrieval baseline: the response of the nearest training prompt (TF-IDF cosine)
    from textgen_cli.metrics.checks import NearestPrompt

    training = [(d["messages"][-2]["content"], d["messages"][-1]["content"]) for d in DIALOGUE_TRAIN]
    index = NearestPrompt([prompt for prompt, _ in training])
    retrieved = [training[index.nearest(d["messages"][-2]["content"])][1] for d in DIALOGUE_TEST]
    assert retrieved[-1] == "I am fine, thanks."  # "Are you tired?" is nearest to "Are you well?"
    baselines = {b["key"]: b for b in report["baselines"]}
    assert list(baselines) == ["most_frequent", "retrieval"]
    assert_scores_match(baselines["retrieval"]["metrics"], retrieved, references)


# ------------------------------------------------------------------------------------ robustness


@pytest.fixture(scope="module")
def robustness(space, tmp_path_factory):
    run = trained_run(space, "chatgpt")
    ok(run.finetune)
    first, second = tmp_path_factory.mktemp("robust-a"), tmp_path_factory.mktemp("robust-b")
    recipe = "recipe/evaltest-chatgpt.yaml"
    a = ok(
        textgen(
            [
                "evaluate",
                "--recipe",
                recipe,
                "--perturb",
                "char:0.1",
                "--perturb",
                "word_drop:0.1",
                "--output",
                str(first),
                "--json",
            ],
            cwd=space,
        )
    )
    # the second run only needs the perturbed sources and predictions: fewer metrics, fewer resamples
    ok(
        textgen(
            [
                "evaluate",
                "--recipe",
                recipe,
                "eval.metrics=[chrf]",
                "eval.bootstrap=10",
                "--perturb",
                "char:0.1",
                "--output",
                str(second),
                "--json",
            ],
            cwd=space,
        )
    )
    return json.loads(a.stdout), first, second


def test_robustness_entries_clean_perturbed_drop(robustness):
    report, folder, _ = robustness
    entries = {r["perturbation"]: r for r in report["robustness"]}
    assert set(entries) == {"char:0.1", "word_drop:0.1"}
    for name, entry in entries.items():
        kind, rate = name.split(":")
        assert entry["kind"] == kind and entry["rate"] == float(rate)
        for row in ("bleu", "chrf", "rougeL"):
            clean, noisy = report["metrics"][row], entry["metrics"][row]
            assert entry["drop"][row] == pytest.approx(clean - noisy, abs=1e-9), (name, row)
        rows = read_jsonl(folder / f"predictions-{kind}-{rate}.jsonl")
        # the perturbed scores are those of the written perturbed predictions
        assert_scores_match(entry["metrics"], [r["prediction"] for r in rows], [r["reference"] for r in rows])
        assert all(r["perturbation"] == name for r in rows)


def test_robustness_perturbs_sources_not_references(robustness):
    _, folder, _ = robustness
    clean = read_jsonl(folder / "predictions.jsonl")
    for name in ("predictions-char-0.1.jsonl", "predictions-word_drop-0.1.jsonl"):
        noisy = read_jsonl(folder / name)
        assert [r["id"] for r in noisy] == [r["id"] for r in clean]
        assert [r["reference"] for r in noisy] == [r["reference"] for r in clean]
        changed = sum(n["source"] != c["source"] for n, c in zip(noisy, clean))
        # every source has >= 6 words a perturbation may touch; an edit can rarely be a no-op
        assert changed >= len(clean) // 2, (name, changed)


def test_robustness_is_deterministic_for_a_seed(robustness):
    _, first, second = robustness
    a = read_jsonl(first / "predictions-char-0.1.jsonl")
    b = read_jsonl(second / "predictions-char-0.1.jsonl")
    assert [r["source"] for r in a] == [r["source"] for r in b]
    assert [r["prediction"] for r in a] == [r["prediction"] for r in b]


# ------------------------------------------------------------------------------------ user metric, network


def test_user_metric_module_by_path_relative_to_the_recipe(space, tmp_path):
    run = trained_run(space, "chatgpt")
    ok(run.finetune)
    # the recipe lives in recipe/, the cwd is its parent: the path resolves against the recipe file
    assert not (space / "evaltest_metrics").exists()
    result = ok(
        textgen(
            ["evaluate", "--recipe", "recipe/evaltest-user-metric.yaml", "--output", str(tmp_path / "out"), "--json"],
            cwd=space,
        )
    )
    report = json.loads((tmp_path / "out" / "eval.json").read_text(encoding="utf-8"))
    assert json.loads(result.stdout)["metrics"] == report["metrics"]
    rows = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    expected = {
        "prediction_chars": sum(len(r["prediction"]) for r in rows) / len(rows),
        "source_chars": sum(len(r["source"]) for r in rows) / len(rows),
    }
    for key, value in expected.items():
        found = {row: v for row, v in report["metrics"].items() if row.split(".")[-1] == key}
        assert len(found) == 1, (key, report["metrics"])
        assert next(iter(found.values())) == pytest.approx(value), key
    assert "bleu" in report["metrics"] and "chrf" not in report["metrics"]  # only the listed metrics


SITECUSTOMIZE = """
import os, socket

_LOG = os.environ["TEXTGEN_TEST_NET_LOG"]
_connect = socket.socket.connect


def _refuse(self, address, *args):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        with open(_LOG, "a") as handle:
            handle.write(repr(address) + "\\n")
        raise OSError("network blocked by the test suite")
    return _connect(self, address, *args)


_getaddrinfo = socket.getaddrinfo


def _resolve(host, *args, **kwargs):
    if host not in (None, "localhost", "127.0.0.1", "::1"):
        with open(_LOG, "a") as handle:
            handle.write("resolve " + repr(host) + "\\n")
        raise socket.gaierror("name resolution blocked by the test suite")
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _refuse
socket.socket.connect_ex = lambda self, address: (_refuse(self, address), 0)[1]
socket.getaddrinfo = _resolve
"""


def unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def test_nothing_touches_the_network(space, tmp_path):
    """No HF_*_OFFLINE variables; the network is gone (a fresh network namespace when unshare is
    allowed) and every name lookup or internet connect attempt is logged and refused
    (sitecustomize), so that even an attempt whose failure is swallowed fails the test."""
    run = trained_run(space, "sora")
    ok(run.finetune)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    log = tmp_path / "connects.log"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path / "site"), env.get("PYTHONPATH")]))
    env["TEXTGEN_TEST_NET_LOG"] = str(log)
    env["HF_HOME"] = str(tmp_path / "hf-home")  # an empty cache: nothing to fall back on
    prefix = ("unshare", "-rn") if unshare_works() else ()
    result = ok(
        textgen(
            ["evaluate", "--recipe", "recipe/evaltest-sora.yaml", "--output", str(tmp_path / "out"), "--json"],
            cwd=space,
            env=env,
            prefix=prefix,
        )
    )
    assert not log.exists() or log.read_text() == "", f"connect attempts: {log.read_text()}"
    report = json.loads(result.stdout)
    assert set(ROWS) <= set(report["metrics"])
    assert (tmp_path / "out" / "eval.json").is_file()


# ------------------------------------------------------------------------------------ errors


def test_unknown_metric_name_suggests_the_closest(space, tmp_path):
    trained_run(space, "chatgpt")
    args = [
        "eval.metrics=[bleu,chrff]",
        "eval.max_examples=2",
        "generate.max_new_tokens=2",
    ]  # fail fast where it fails late
    result = textgen(
        ["evaluate", "--recipe", "recipe/evaltest-chatgpt.yaml", *args, "--output", str(tmp_path)], cwd=space
    )
    usage_error(result, "chrff", "Did you mean 'chrf'?")
    assert not (tmp_path / "eval.json").exists()


def test_bad_split_is_a_usage_error(space):
    result = textgen(["evaluate", "--recipe", "recipe/evaltest-chatgpt.yaml", "--split", "nonsense"], cwd=space)
    usage_error(result, "nonsense")


@pytest.mark.parametrize("spec", ["char", "sparkle:0.1", "word_drop:2"])
def test_bad_perturb_spec_is_a_usage_error(space, spec):
    result = textgen(["evaluate", "--recipe", "recipe/evaltest-chatgpt.yaml", "--perturb", spec], cwd=space)
    usage_error(result, "--perturb", spec)


# ---------------------------------------------------------------- held-out prose, sliding window


def _prose_generator(tokenizer, context: int):
    from types import SimpleNamespace

    import torch

    from textgen_cli.core.schema import ModelSection
    from textgen_cli.models import role_for

    torch.manual_seed(0)
    model = (
        role_for("chatgpt")
        .build(
            ModelSection(family="chatgpt", layers=1, hidden=32, heads=2, ffn=64, context=context, dropout=0.0),
            tokenizer,
        )
        .eval()
    )
    return SimpleNamespace(tokenizer=tokenizer, model=model, family="chatgpt", role=role_for("chatgpt"))


def test_prose_sliding_window_scores_every_token_once(tokenizer, tmp_path):
    from textgen_cli.evaluation.likelihood import prose_likelihood
    from textgen_cli.objectives import encode_texts

    texts = [line.strip() for line in moby_lines(30) if line.strip()]
    (tmp_path / "prose.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    result = prose_likelihood(_prose_generator(tokenizer, 32), str(tmp_path / "prose.txt"), "text", 8)
    stream_length = sum(len(ids) + 1 for ids in encode_texts(tokenizer, texts))
    assert stream_length > 4 * 32  # several windows
    assert result["tokens"] == stream_length - 1
    assert result["bytes"] == len("\n".join(texts).encode("utf-8"))
    assert result["bits_per_byte"] == pytest.approx(result["nll_sum"] / math.log(2) / result["bytes"])


def test_prose_within_one_window_equals_a_single_forward_pass(tokenizer, tmp_path):
    import torch
    import torch.nn.functional as F

    from textgen_cli.evaluation.likelihood import prose_likelihood
    from textgen_cli.objectives import encode_texts

    texts = ["Call me Ishmael.", "Some years ago, never mind how long precisely."]
    (tmp_path / "short.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    generator = _prose_generator(tokenizer, 64)
    result = prose_likelihood(generator, str(tmp_path / "short.txt"), "text", 8)
    stream = [t for ids in encode_texts(tokenizer, texts) for t in (*ids, tokenizer.eos_token_id)]
    assert len(stream) <= 64
    with torch.no_grad():
        logits = generator.model(torch.tensor([stream])).logits[0, :-1]
    expected = F.cross_entropy(logits, torch.tensor(stream[1:]), reduction="sum")
    assert result["nll_sum"] == pytest.approx(float(expected), rel=1e-5)


def test_prose_is_skipped_for_sora_with_a_reason(tokenizer, tmp_path):
    from types import SimpleNamespace

    from textgen_cli.evaluation.likelihood import prose_likelihood
    from textgen_cli.models import role_for

    assert (
        "encoder-decoder"
        in prose_likelihood(SimpleNamespace(family="sora", role=role_for("sora")), "x.txt", "text", 8)["skipped"]
    )


def _eval_hash_before_the_helper(loaded, stage, split: str) -> str:
    """eval_files.eval_hash as it was written before recipe.settings_digest served every hash: an
    evaluation made then must still be reused by `textgen compare`, so the hash must not change."""
    import dataclasses
    import hashlib

    r = loaded.recipe
    blob = json.dumps(
        {
            "model": loaded.stage_hash(stage) if stage in ("pretrain", "finetune", "adv-train") else None,
            "eval": dataclasses.asdict(r.eval),
            "generate": dataclasses.asdict(r.generate),
            "split": getattr(r.data.finetune, split),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def test_eval_hash_is_unchanged_by_the_shared_hash_helper():
    from textgen_cli.evaluation.eval_files import eval_hash
    from textgen_cli.recipe import load_recipe, shipped_recipes_dir

    for overrides in ([], ["eval.bootstrap=7", "generate.max_new_tokens=5"]):
        loaded = load_recipe(str(shipped_recipes_dir() / "sora.yaml"), overrides)
        for stage in ("pretrain", "finetune", "adv-train", None):
            for split in ("test", "validation"):
                assert eval_hash(loaded, stage, split) == _eval_hash_before_the_helper(loaded, stage, split), (
                    overrides,
                    stage,
                    split,
                )


def test_prose_auto_scores_textgen_models_only(tokenizer):
    """eval.prose=auto: a model pretrained by textgen (its own tokenizer) is scored; one pretrained
    elsewhere is skipped with the reason and the key that scores it; on and off override."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from textgen_cli.evaluation.likelihood import prose_skipped

    foreign = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, "[UNK]")))
    assert prose_skipped("auto", tokenizer) is None
    assert "eval.prose=on" in prose_skipped("auto", foreign)
    assert prose_skipped("on", foreign) is None
    assert prose_skipped("off", tokenizer) == "eval.prose is off"


def test_references_scored_from_decodings_cache_equal_separate_passes(space, tmp_path, monkeypatch):
    """A decoder-only model's references are scored from the cache its decoding batches read the
    prompts into. Scored instead in separate passes over whole sequences (what an encoder-decoder
    gets), every number is the same: the predictions, each reference's NLL after its own and after
    its partner's prompt, the likelihood row and the input-use gap. In a separate pass, each row's
    sum is what that reference scored alone gives."""
    import pytest

    from textgen_cli.evaluation import evaluate
    from textgen_cli.generation.generate import load_generator
    from textgen_cli.models.decoder_only import DecoderOnly
    from textgen_cli.recipe import load_recipe

    ok(trained_run(space, "chatgpt").finetune)
    monkeypatch.chdir(space)
    # prompts cut to 24 tokens (the 64-token context less 40 new ones): about half of the references
    # fit after them, so both ways of scoring are used, and the rest are scored in separate passes
    overrides = ["eval.bootstrap=20", "eval.input_check=1000", "generate.max_new_tokens=40"]
    loaded = load_recipe("recipe/evaltest-chatgpt.yaml", overrides)
    from textgen_cli.generation.continuations import CachedPrompts

    scored_from_cache = []
    nll = CachedPrompts.nll
    monkeypatch.setattr(CachedPrompts, "nll", lambda self, *a: scored_from_cache.append(len(a[0])) or nll(self, *a))
    cached = evaluate.run_evaluate(loaded, None, None, "test", [], output=str(tmp_path / "cached"), progress=False)
    assert 0 < sum(scored_from_cache) < 2 * cached.n_examples
    with monkeypatch.context() as patched:
        patched.setattr(DecoderOnly, "prompt_cache", lambda self, model, input_ids, attention_mask: None)
        passes = evaluate.run_evaluate(loaded, None, None, "test", [], output=str(tmp_path / "passes"), progress=False)
    rows = {
        name: [json.loads(line) for line in (tmp_path / name / "predictions.jsonl").read_text().splitlines()]
        for name in ("cached", "passes")
    }
    assert [r["prediction"] for r in rows["cached"]] == [r["prediction"] for r in rows["passes"]]
    for key in ("reference_nll", "reference_nll_shuffled"):
        assert all(key in r for r in rows["cached"]), key
        assert [r[key] for r in rows["cached"]] == pytest.approx([r[key] for r in rows["passes"]], rel=1e-4)
    assert cached.likelihood["bits_per_byte"] == pytest.approx(passes.likelihood["bits_per_byte"], rel=1e-5)
    assert cached.likelihood["tokens"] == passes.likelihood["tokens"]
    assert cached.input_use["gap"] == pytest.approx(passes.input_use["gap"], rel=1e-4, abs=1e-6)
    assert cached.input_use["bits_per_byte_true"] == pytest.approx(cached.likelihood["bits_per_byte"], rel=1e-6)
    from textgen_cli.data.readers import examples_from, read_finetune_examples
    from textgen_cli.evaluation.likelihood import per_example_nll

    generator = load_generator(None, None, loaded=loaded)
    section = loaded.recipe.data.finetune
    examples = examples_from(read_finetune_examples(section, "test", 4), section.task)
    batched = per_example_nll(generator, examples, batch_size=4)
    alone = [per_example_nll(generator, [e], batch_size=1)[0] for e in examples]
    assert batched == pytest.approx(alone, rel=1e-5)
