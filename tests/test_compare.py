"""`textgen compare` through the installed entry point: one tiny chatgpt and one tiny sora recipe.

The module's runs are made once and inspected step by step, in this order (each fixture depends on
the one before, so any selection of tests sees the same history): a first compare that trains
everything; the same compare again (everything reused); a changed finetune setting in one recipe
(only that finetune retrained); finished runs compared by directory (nothing trained); `--match
flops` and `--match tokens` (the second recipe retrained at matched step counts). `--seeds 2` and
the usage errors use runs of their own.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import statistics
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import SHIPPED, moby_lines, textgen_exe

pytestmark = pytest.mark.slow

GPT, BART = "cmp-gpt", "cmp-bart"  # chatgpt, sora
STAGES = ("pretrain", "finetune")
PNGS = ("loss_vs_tokens.png", "validation.png", "metrics.png")
N_TEST = 16

RECIPE = """\
description: "tiny {family} for the compare tests"
stages: [pretrain, finetune]
model: {{family: {family}, layers: 1, hidden: 32, heads: 2, ffn: 64, context: 64, dropout: 0.1}}
tokenizer: {{vocab_size: 400}}
data:
  pretrain: {{train: ../data/pretrain-train.txt, validation: ../data/pretrain-val.txt}}
  finetune: {{task: pairs, train: ../data/finetune-train.jsonl, validation: ../data/finetune-val.jsonl, test: ../data/{test}}}
prompt: {{system: "Modern English."}}
train: {{seed: 7, device: cpu, batch_size: 8, lr: 3.0e-3, warmup_steps: 5, log_every: 5, eval_every: 30, eval_batches: 2}}
pretrain: {{steps: 30}}
finetune: {{steps: {finetune_steps}}}
generate: {{max_new_tokens: 16}}
eval: {{bootstrap: 100}}
"""


def write_recipe(root: Path, name: str, family: str, test: str = "test.jsonl", finetune_steps: int = 30) -> None:
    text = RECIPE.format(family=family, test=test, finetune_steps=finetune_steps)
    (root / "recipes" / f"{name}.yaml").write_text(text, encoding="utf-8")


def textgen(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """The installed entry point, offline. One intra-op thread: the models are tiny and the test
    machine is shared, where more threads only contend (measured 2-5x slower per step)."""
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([textgen_exe(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"
    assert "Traceback" not in result.stderr
    return result


def report_folder(result: subprocess.CompletedProcess, root: Path) -> Path:
    """The report path, printed on the last line of stdout."""
    last = result.stdout.strip().splitlines()[-1]
    found = re.search(r"report: (\S+)/report\.html", last)
    assert found, f"no report path on the last line: {last!r}"
    folder = root / found.group(1)
    assert folder.is_dir(), folder
    return folder


def summaries(root: Path) -> dict[Path, tuple[int, str]]:
    """Every stage's summary.json under runs/, with its mtime and content."""
    return {p.relative_to(root): (p.stat().st_mtime_ns, p.read_text(encoding="utf-8")) for p in sorted((root / "runs").glob("*/*/summary.json"))}


def summary(root: Path, name: str, stage: str) -> dict:
    return json.loads((root / "runs" / name / stage / "summary.json").read_text(encoding="utf-8"))


def eval_report(root: Path, name: str) -> dict:
    return json.loads((root / "runs" / name / "finetune" / "eval.json").read_text(encoding="utf-8"))


def records(folder: Path) -> dict[tuple[str, str], dict]:
    data = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    return {(r["model"], r["metric"]): r for r in data["metrics"]}


def csv_records(folder: Path) -> dict[tuple[str, str], dict]:
    with (folder / "metrics.csv").open(encoding="utf-8", newline="") as handle:
        return {(r["model"], r["metric"]): r for r in csv.DictReader(handle)}


def assert_values_are_the_runs_own(folder: Path, root: Path, labels: dict[str, str]) -> None:
    """metrics.json and metrics.csv hold exactly the values of each run's eval.json and summary.json.
    `labels`: report column -> run name."""
    by_json, by_csv = records(folder), csv_records(folder)
    for label, name in labels.items():
        report = eval_report(root, name)
        stages = [summary(root, name, stage) for stage in STAGES]
        expected = {
            "bleu": report["metrics"]["bleu"],
            "chrf": report["metrics"]["chrf"],
            "rougeL": report["metrics"]["rougeL"],
            "distinct_1": report["metrics"]["distinct_1"],
            "bits_per_byte": report["likelihood"]["bits_per_byte"],
            "perplexity": report["likelihood"]["perplexity"],
            "val_loss": stages[-1]["final_val_loss"],
            "parameters": stages[-1]["parameters"],
            "tokens": sum(s["tokens"] for s in stages),
            "flops": sum(s["flops"] for s in stages),
        }
        for metric, value in expected.items():
            assert by_json[(label, metric)]["value"] == pytest.approx(value, rel=1e-12), (label, metric)
            assert float(by_csv[(label, metric)]["value"]) == pytest.approx(value, rel=1e-12), (label, metric)
        for metric in ("bleu", "chrf", "rougeL"):
            bound = report["intervals"][metric]
            assert (by_json[(label, metric)]["low"], by_json[(label, metric)]["high"]) == pytest.approx((bound["low"], bound["high"]), rel=1e-12)
            assert by_json[(label, metric)]["signature"] == report["signatures"][metric]
        assert by_json[(label, "parameters")]["value"] > 0


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compare")
    (root / "data").mkdir()
    (root / "recipes").mkdir()
    (root / "data" / "pretrain-train.txt").write_text("".join(moby_lines(200)), encoding="utf-8")
    (root / "data" / "pretrain-val.txt").write_text("".join(moby_lines(40, "validation")), encoding="utf-8")

    def shortest(split: str) -> list[str]:
        with (SHIPPED / "data" / "bible-modern" / f"{split}.jsonl").open(encoding="utf-8") as handle:
            rows = handle.readlines()
        return sorted(rows, key=lambda line: (lambda r: len(r["source"]) + len(r["target"]))(json.loads(line)))

    train, test = shortest("train"), shortest("test")
    (root / "data" / "finetune-train.jsonl").write_text("".join(train[:200]), encoding="utf-8")
    (root / "data" / "finetune-val.jsonl").write_text("".join(train[200:240]), encoding="utf-8")
    (root / "data" / "test.jsonl").write_text("".join(test[:N_TEST]), encoding="utf-8")
    (root / "data" / "other-test.jsonl").write_text("".join(test[N_TEST : 2 * N_TEST]), encoding="utf-8")
    write_recipe(root, GPT, "chatgpt")
    write_recipe(root, BART, "sora")
    write_recipe(root, "cmp-other", "sora", test="other-test.jsonl")
    return root


RECIPES = ["--recipe", f"recipes/{GPT}.yaml", "--recipe", f"recipes/{BART}.yaml"]


@pytest.fixture(scope="module")
def first(root):
    """The first compare: trains both recipes, evaluates both models, writes the report."""
    result = ok(textgen(["compare", *RECIPES], cwd=root))
    return {"result": result, "folder": report_folder(result, root), "summaries": summaries(root)}


@pytest.fixture(scope="module")
def rerun(root, first):
    result = ok(textgen(["compare", *RECIPES], cwd=root))
    return {"result": result, "folder": report_folder(result, root), "summaries": summaries(root)}


@pytest.fixture(scope="module")
def changed(root, rerun):
    """The chatgpt recipe's finetune.steps changes from 30 to 20 in its file."""
    write_recipe(root, GPT, "chatgpt", finetune_steps=20)
    result = ok(textgen(["compare", *RECIPES], cwd=root))
    return {"result": result, "folder": report_folder(result, root), "summaries": summaries(root), "before": rerun["summaries"]}


@pytest.fixture(scope="module")
def from_runs(root, changed):
    result = ok(textgen(["compare", f"runs/{GPT}", f"runs/{BART}"], cwd=root))
    return {"result": result, "folder": report_folder(result, root), "summaries": summaries(root), "before": changed["summaries"]}


@pytest.fixture(scope="module")
def matched_flops(root, from_runs):
    result = ok(textgen(["compare", *RECIPES, "--match", "flops"], cwd=root))
    return {"result": result, "folder": report_folder(result, root), "runs": {name: {stage: summary(root, name, stage) for stage in STAGES} for name in (GPT, BART)}}


@pytest.fixture(scope="module")
def matched_tokens(root, matched_flops):
    result = ok(textgen(["compare", *RECIPES, "--match", "tokens"], cwd=root))
    return {"result": result, "folder": report_folder(result, root), "runs": {name: {stage: summary(root, name, stage) for stage in STAGES} for name in (GPT, BART)}}


# ------------------------------------------------------------------------------------ the report


def test_report_folder_holds_every_file_and_is_printed(first, root):
    folder = first["folder"]
    assert folder.parent == root / "reports"
    assert re.fullmatch(rf"{GPT}-vs-{BART}-\d{{8}}-\d{{6}}", folder.name), folder.name
    for name in ("report.md", "report.html", "metrics.csv", "metrics.json", *PNGS):
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0, name
    for name in PNGS:
        assert (folder / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), name
    assert not list((root / "reports").glob("*.partial"))
    markdown = (folder / "report.md").read_text(encoding="utf-8")
    assert GPT in markdown and BART in markdown and "BLEU" in markdown and "bits per byte" in markdown
    # the first compare trained everything
    log = first["result"].stderr
    for name in (GPT, BART):
        for stage in STAGES:
            assert f"compare: training {name} {stage}" in log
            assert summary(root, name, stage)["steps"] == 30


def test_metrics_equal_the_runs_own_eval_and_summary(first, root):
    # in file order no later compare has changed the runs yet
    assert summaries(root) == first["summaries"], "the runs changed before this test ran; run the module in file order"
    assert_values_are_the_runs_own(first["folder"], root, {GPT: GPT, BART: BART})
    by_json = records(first["folder"])
    assert {model for model, _ in by_json} == {GPT, BART}
    assert all(r["n_seeds"] == 1 and r["std"] is None for r in by_json.values())
    assert by_json[(GPT, "parameters")]["value"] != by_json[(BART, "parameters")]["value"]


class StrictHTML(HTMLParser):
    """Fails on any end tag that does not close the innermost open element."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.images: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'} at {self.getpos()}")
        else:
            self.stack.pop()


def test_report_html_is_valid_and_self_contained(first):
    page = (first["folder"] / "report.html").read_text(encoding="utf-8")
    assert page.lstrip().lower().startswith("<!doctype html>")
    parser = StrictHTML()
    parser.feed(page)
    parser.close()
    assert parser.errors == []
    assert parser.stack == [], f"unclosed elements: {parser.stack}"
    assert "table" in parser.tags and "td" in parser.tags
    assert len(parser.images) == len(PNGS)
    for src in parser.images:
        assert src.startswith("data:image/png;base64,"), src[:60]
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(b"\x89PNG")
    assert GPT in page and BART in page


# ------------------------------------------------------------------------------------ reuse


def test_rerun_reuses_every_stage_and_evaluation(rerun, first, root):
    assert rerun["summaries"] == first["summaries"]  # same mtimes, same content: nothing retrained
    log = rerun["result"].stderr
    assert "compare: training" not in log
    for name in (GPT, BART):
        for stage in STAGES:
            assert f"compare: reusing runs/{name}/{stage}" in log
        assert f"compare: reusing the evaluation in runs/{name}/finetune/eval.json" in log
    assert rerun["folder"] != first["folder"]
    runs = json.loads((rerun["folder"] / "metrics.json").read_text(encoding="utf-8"))["runs"]
    assert len(runs) == 4 and all(r["reused"] for r in runs)


def test_changed_finetune_setting_retrains_finetune_only(changed, root):
    before, after = changed["before"], changed["summaries"]
    gpt_finetune = Path("runs", GPT, "finetune", "summary.json")
    assert after[gpt_finetune] != before[gpt_finetune]
    assert summary(root, GPT, "finetune")["steps"] == 20
    for path in before:
        if path != gpt_finetune:
            assert after[path] == before[path], f"{path} was retrained"
    log = changed["result"].stderr
    assert f"compare: training {GPT} finetune" in log
    assert log.count("compare: training") == 1
    assert f"compare: reusing runs/{GPT}/pretrain" in log and f"compare: reusing runs/{BART}/finetune" in log
    assert f"compare: evaluating {GPT}" in log  # a new model: its evaluation is not reused
    assert_values_are_the_runs_own(changed["folder"], root, {GPT: GPT, BART: BART})
    runs = {(r["model"], r["stage"]): r for r in json.loads((changed["folder"] / "metrics.json").read_text(encoding="utf-8"))["runs"]}
    assert runs[(GPT, "finetune")]["reused"] is False and runs[(GPT, "finetune")]["steps"] == 20
    assert runs[(GPT, "pretrain")]["reused"] is True and runs[(BART, "finetune")]["reused"] is True


def test_compare_finished_runs_by_directory(from_runs, root):
    assert from_runs["summaries"] == from_runs["before"]  # nothing trained
    assert "compare: training" not in from_runs["result"].stderr
    folder = from_runs["folder"]
    for name in ("report.md", "report.html", "metrics.csv", "metrics.json", *PNGS):
        assert (folder / name).is_file(), name
    assert_values_are_the_runs_own(folder, root, {f"{GPT} finetune": GPT, f"{BART} finetune": BART})


# ------------------------------------------------------------------------------------ --match


def matched_steps_in_log(log: str, match: str) -> dict[tuple[str, str], int]:
    found = re.findall(rf"--match {match}: (\S+) (pretrain|finetune) gets (\d+) steps", log)
    return {(name, stage): int(steps) for name, stage, steps in found}


def test_match_flops_pretrain_estimates_agree_within_one_step(matched_flops, root):
    """The estimate compare matches on (textgen_cli.flops on the final models and the pretraining
    tokens per sequence) agrees within one step of the second recipe."""
    from textgen_cli.flops import flops_model, pretrain_tokens_per_sequence, step_flops
    from textgen_cli.models import load_checkpoint
    from textgen_cli.tokenizer import load_tokenizer

    runs = matched_flops["runs"]
    steps = matched_steps_in_log(matched_flops["result"].stderr, "flops")
    assert steps[(BART, "pretrain")] == runs[BART]["pretrain"]["steps"]
    assert runs[GPT]["pretrain"]["steps"] == 30  # the first recipe sets the budget and is reused
    per_step = {}
    for name, family in ((GPT, "chatgpt"), (BART, "sora")):
        final = root / "runs" / name / "pretrain" / "final"
        fm = flops_model(load_checkpoint(final, family, len(load_tokenizer(final))))
        enc, dec = pretrain_tokens_per_sequence(family, 64, 0.3, 3.0)
        per_step[name] = step_flops(fm, enc * 8, dec * 8)  # batch 8, no accumulation
    assert per_step[GPT] != pytest.approx(per_step[BART], rel=0.05)  # a real adjustment, not equal models
    total = {name: per_step[name] * runs[name]["pretrain"]["steps"] for name in (GPT, BART)}
    assert abs(total[GPT] - total[BART]) <= per_step[BART]


def test_match_flops_measured_per_stage(matched_flops):
    """The FLOPs each run measured (summary.json, counted from the real token counts of the batches
    it drew) agree within one step's worth or 5%, whichever is larger: compare matches on the
    expected tokens per sequence (pretrain: from the masking settings; finetune: the mean over the
    training data), while a run's real batches differ from the mean by sampling, e.g. sora's span
    masking and which finetuning examples were drawn."""
    runs = matched_flops["runs"]
    steps = matched_steps_in_log(matched_flops["result"].stderr, "flops")
    for stage in STAGES:
        a, b = runs[GPT][stage], runs[BART][stage]
        assert steps[(BART, stage)] == b["steps"]
        assert b["steps"] != a["steps"], stage  # matching really changed the step count
        one_step = b["flops"] / b["steps"]
        assert abs(a["flops"] - b["flops"]) <= max(one_step, 0.05 * a["flops"]), (stage, a["flops"], b["flops"], one_step)
    provenance = json.loads((matched_flops["folder"] / "metrics.json").read_text(encoding="utf-8"))["provenance"]
    assert provenance["match"] == "flops"


def test_match_tokens_per_stage(matched_tokens):
    """Training tokens agree within one step's worth or 5% (same reason as for FLOPs)."""
    runs = matched_tokens["runs"]
    steps = matched_steps_in_log(matched_tokens["result"].stderr, "tokens")
    for stage in STAGES:
        a, b = runs[GPT][stage], runs[BART][stage]
        assert steps[(BART, stage)] == b["steps"]
        one_step = b["tokens"] / b["steps"]
        assert abs(a["tokens"] - b["tokens"]) <= max(one_step, 0.05 * a["tokens"]), (stage, a["tokens"], b["tokens"], one_step)
    # chatgpt's pretraining sequence is a full 64-token block; sora's has encoder and decoder tokens
    assert runs[GPT]["pretrain"]["tokens"] == 30 * 8 * 64
    assert runs[BART]["pretrain"]["steps"] < 30
    provenance = json.loads((matched_tokens["folder"] / "metrics.json").read_text(encoding="utf-8"))["provenance"]
    assert provenance["match"] == "tokens"


# ------------------------------------------------------------------------------------ seeds


def test_seeds_report_mean_and_std(root):
    result = ok(textgen(["compare", "--recipe", f"recipes/{GPT}.yaml", "--seeds", "2", "pretrain.steps=10", "finetune.steps=10"], cwd=root))
    folder = report_folder(result, root)
    runs = {seed: [summary(root, f"{GPT}-seed{seed}", stage) for stage in STAGES] for seed in (7, 8)}
    assert [r[0]["seed"] for r in runs.values()] == [7, 8]
    by_json = records(folder)
    assert {model for model, _ in by_json} == {GPT}  # one column: the recipe, over its seeds
    for metric in ("bleu", "chrf", "rougeL", "bits_per_byte", "val_loss", "parameters"):
        assert by_json[(GPT, metric)]["n_seeds"] == 2, metric
        assert by_json[(GPT, metric)]["std"] is not None, metric
    losses = [r[-1]["final_val_loss"] for r in runs.values()]
    assert losses[0] != losses[1]  # two seeds, two models
    assert by_json[(GPT, "val_loss")]["value"] == pytest.approx(statistics.fmean(losses))
    assert by_json[(GPT, "val_loss")]["std"] == pytest.approx(statistics.stdev(losses))
    bleus = [eval_report(root, f"{GPT}-seed{seed}")["metrics"]["bleu"] for seed in (7, 8)]
    assert by_json[(GPT, "bleu")]["std"] == pytest.approx(statistics.stdev(bleus), abs=1e-12)
    assert " ± " in (folder / "report.md").read_text(encoding="utf-8")
    assert json.loads((folder / "metrics.json").read_text(encoding="utf-8"))["provenance"]["seeds"] == [7, 8]


# ------------------------------------------------------------------------------------ errors


def assert_usage_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert "error: " in result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr[-2000:])


def test_one_recipe_is_a_usage_error(root):
    assert_usage_error(textgen(["compare", "--recipe", f"recipes/{GPT}.yaml"], cwd=root), "two or more")


def test_different_test_files_is_a_usage_error(root):
    result = textgen(["compare", "--recipe", f"recipes/{GPT}.yaml", "--recipe", "recipes/cmp-other.yaml"], cwd=root)
    assert_usage_error(result, "different test files", "other-test.jsonl")
    assert not (root / "runs" / "cmp-other").exists()  # refused before any training


def test_unknown_match_is_a_usage_error(root):
    assert_usage_error(textgen(["compare", *RECIPES, "--match", "nonsense"], cwd=root), "nonsense")
