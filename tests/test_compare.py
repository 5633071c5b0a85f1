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
import re
import statistics
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness import SHIPPED, end_to_end_recipe, merged, moby_lines, ok, save_recipe, textgen, usage_error

pytestmark = pytest.mark.slow

GPT, BART = "cmp-gpt", "cmp-bart"  # chatgpt, sora
STAGES = ("pretrain", "finetune")
PNGS = ("loss_vs_tokens.png", "validation.png", "bleu_vs_tokens.png", "metrics.png")
N_TEST = 16


def compare_recipe(root: Path, name: str, family: str, test: str = "test.jsonl", finetune_steps: int = 30) -> None:
    """recipes/NAME.yaml: the end-to-end tiny recipe, 30 steps a stage, a test split, data in ../data."""
    values = merged(
        end_to_end_recipe(family),
        {
            "description": f"tiny {family} for the compare tests",
            "data": {
                "pretrain": {"train": "../data/pretrain-train.txt", "validation": "../data/pretrain-val.txt"},
                "finetune": {
                    "train": "../data/finetune-train.jsonl",
                    "validation": "../data/finetune-val.jsonl",
                    "test": f"../data/{test}",
                },
            },
            "train": {"eval_every": 30, "eval_generate": 4},
            "pretrain": {"steps": 30},
            "finetune": {"steps": finetune_steps},
            "generate": {"max_new_tokens": 16},
            "eval": {"bootstrap": 100},
        },
    )
    save_recipe(root / "recipes" / f"{name}.yaml", values)


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
    return {
        p.relative_to(root): (p.stat().st_mtime_ns, p.read_text(encoding="utf-8"))
        for p in sorted((root / "runs").glob("*/*/summary.json"))
    }


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
            assert (by_json[(label, metric)]["low"], by_json[(label, metric)]["high"]) == pytest.approx(
                (bound["low"], bound["high"]), rel=1e-12
            )
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
    compare_recipe(root, GPT, "chatgpt")
    compare_recipe(root, BART, "sora")
    compare_recipe(root, "cmp-other", "sora", test="other-test.jsonl")
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
    compare_recipe(root, GPT, "chatgpt", finetune_steps=20)
    result = ok(textgen(["compare", *RECIPES], cwd=root))
    return {
        "result": result,
        "folder": report_folder(result, root),
        "summaries": summaries(root),
        "before": rerun["summaries"],
    }


@pytest.fixture(scope="module")
def from_runs(root, changed):
    result = ok(textgen(["compare", f"runs/{GPT}", f"runs/{BART}"], cwd=root))
    return {
        "result": result,
        "folder": report_folder(result, root),
        "summaries": summaries(root),
        "before": changed["summaries"],
    }


@pytest.fixture(scope="module")
def matched_flops(root, from_runs):
    result = ok(textgen(["compare", *RECIPES, "--match", "flops"], cwd=root))
    return {
        "result": result,
        "folder": report_folder(result, root),
        "runs": {name: {stage: summary(root, name, stage) for stage in STAGES} for name in (GPT, BART)},
    }


@pytest.fixture(scope="module")
def matched_tokens(root, matched_flops):
    result = ok(textgen(["compare", *RECIPES, "--match", "tokens"], cwd=root))
    return {
        "result": result,
        "folder": report_folder(result, root),
        "runs": {name: {stage: summary(root, name, stage) for stage in STAGES} for name in (GPT, BART)},
    }


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
    assert {model for (model, _), r in by_json.items() if r["kind"] == "model"} == {GPT, BART}
    assert all(r["n_seeds"] == 1 and r["std"] is None for r in by_json.values())
    # the copy-source baseline is a column of its own, with the values of the runs' eval.json
    assert by_json[("baseline: copy source", "bleu")]["value"] == pytest.approx(
        eval_report(root, GPT)["baselines"][0]["metrics"]["bleu"], rel=1e-12
    )
    assert by_json[("baseline: copy source", "bleu")]["kind"] == "baseline"
    for label in (GPT, BART):
        use = eval_report(root, label)["input_use"]
        assert by_json[(label, "input_gap")]["value"] == pytest.approx(use["gap"], rel=1e-12)
        assert by_json[(label, "input_bpb_shuffled")]["value"] == pytest.approx(
            use["bits_per_byte_shuffled"], rel=1e-12
        )
        assert by_json[(label, "distinct_outputs_share")]["value"] == pytest.approx(
            eval_report(root, label)["degeneration"]["distinct_outputs_share"], rel=1e-12
        )
    assert by_json[(GPT, "parameters")]["value"] != by_json[(BART, "parameters")]["value"]


def test_every_registered_metric_is_a_row_of_the_table(first):
    """Each entry of metrics/registry.py reaches the report: a row of the comparison table under its
    label and group, and a record of metrics.json for both models.
    A metric registered but left out of what compare reads fails here."""
    from textgen_cli.metrics.registry import ROWS, TABLE_ROWS

    md = (first["folder"] / "report.md").read_text(encoding="utf-8")
    table = md.split("## Results", 1)[1].split("## Plots", 1)[0]
    shown = [
        line.split(" | ")[:2]
        for line in table.splitlines()
        if line.startswith("| ") and not line.startswith(("| group", "|---"))
    ]
    stripped = [(group.removeprefix("| "), label) for group, label in shown]
    assert [(row.group, row.label) for row in TABLE_ROWS] == stripped[
        : len(TABLE_ROWS)
    ]  # the terminal prints the same rows (labels may wrap there)
    by_json = records(first["folder"])
    for row in ROWS:  # table=False rows too: they are in the files, only not in the table
        for model in (GPT, BART):
            assert (model, row.name) in by_json, f"{row.name} missing for {model} in metrics.json"
            assert by_json[(model, row.name)]["group"] == row.group


def test_verdicts_above_the_table_and_atop_the_reports(first, root):
    """Tiny 30-step models are below copy-source: each is flagged above the terminal table and at the
    top of report.md and report.html; metrics.json keeps the verdicts."""
    out = first["result"].stdout
    table_at = out.index("textgen compare")
    for label in (GPT, BART):
        line = f"{label}: FLAGGED, do not trust its ranking"
        assert line in out and out.index(line) < table_at
    assert "- below the copy source baseline: BLEU" in out
    assert "baseline: copy" in out  # the baseline column
    markdown = (first["folder"] / "report.md").read_text(encoding="utf-8")
    assert markdown.index("## Verdict") < markdown.index("## Results")
    assert f"- **{GPT}: FLAGGED, do not trust its ranking**" in markdown
    page = (first["folder"] / "report.html").read_text(encoding="utf-8")
    assert page.index("<h2>Verdict</h2>") < page.index("<h2>Results</h2>")
    verdicts = {
        v["model"]: v for v in json.loads((first["folder"] / "metrics.json").read_text(encoding="utf-8"))["verdicts"]
    }
    assert set(verdicts) == {GPT, BART} and not any(v["ok"] for v in verdicts.values())
    assert verdicts[GPT]["flags"] == eval_report(root, GPT)["verdict"]["flags"]


def test_a_lead_without_interval_is_marked_untested(first):
    """Cost rows and likelihood rows have no per-example statistic: their best cell carries the
    no-claim marker, never the significance star. BLEU is tested (two-level bootstrap), but with one
    seed per arm, flagged models and different budgets its star is withheld, and the reasons listed."""
    markdown = (first["folder"] / "report.md").read_text(encoding="utf-8")
    rows = {line.split(" | ")[1]: line for line in markdown.splitlines() if line.startswith("| ")}
    assert "(†)" in rows["validation loss (own tokenizer)"] and "** *" not in rows["validation loss (own tokenizer)"]
    assert "(†)" in rows["bits per byte (test references)"]
    assert "†: no claim: untested" in markdown and "significant at 95% (two-level bootstrap;" in markdown
    assert "*" not in rows["BLEU"].replace("**", "")  # no star anywhere in the row
    assert markdown.splitlines()[2].startswith("**CONFOUNDED**: the arms differ in more than the family:")


def test_val_bleu_during_training_is_the_final_models_bleu(first, root):
    """train.eval_generate=4: the finetune validation pass logs val_bleu (pretrain does not); at the
    last step the model is the final one, so val_bleu equals `textgen evaluate` on the same first 4
    validation examples (greedy); that evaluation is a record of its own, beside the default one."""
    for name in (BART, GPT):  # both families; GPT's last
        records = [
            json.loads(line)
            for line in (root / "runs" / name / "finetune" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        ]
        logged = [r for r in records if "val_bleu" in r]
        assert (
            [r["step"] for r in logged] == [30] and logged[0]["val_bleu_examples"] == 4 and "val_loss" in logged[0]
        ), name
        assert 0.0 <= logged[0]["val_bleu"] <= 100.0
        assert not any(
            "val_bleu" in line
            for line in (root / "runs" / name / "pretrain" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        )
    result = ok(
        textgen(
            [
                "evaluate",
                "--recipe",
                f"recipes/{GPT}.yaml",
                "--split",
                "validation",
                "eval.max_examples=4",
                "eval.metrics=[bleu]",
                "eval.bootstrap=10",
                "--json",
            ],
            cwd=root,
        )
    )
    report = json.loads(result.stdout)
    assert report["metrics"]["bleu"] == pytest.approx(logged[0]["val_bleu"], abs=1e-9)
    assert Path(report["files"]["eval"]).parent.parent.name == "evals"
    assert (root / "runs" / GPT / "finetune" / "eval.json").is_file()
    markdown = (first["folder"] / "report.md").read_text(encoding="utf-8")
    assert "![validation BLEU against training tokens](bleu_vs_tokens.png)" in markdown


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
    runs = {
        (r["model"], r["stage"]): r
        for r in json.loads((changed["folder"] / "metrics.json").read_text(encoding="utf-8"))["runs"]
    }
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
    """The estimate compare matches on (textgen_cli.models.flops on the final models and the pretraining
    tokens per sequence) agrees within one step of the second recipe."""
    from textgen_cli.data.tokenizer import load_tokenizer
    from textgen_cli.models import load_checkpoint
    from textgen_cli.models.flops import Lengths, flops_model, pretrain_tokens_per_sequence

    runs = matched_flops["runs"]
    steps = matched_steps_in_log(matched_flops["result"].stderr, "flops")
    assert steps[(BART, "pretrain")] == runs[BART]["pretrain"]["steps"]
    assert runs[GPT]["pretrain"]["steps"] == 30  # the first recipe sets the budget and is reused
    per_step = {}
    for name, family in ((GPT, "chatgpt"), (BART, "sora")):
        final = root / "runs" / name / "pretrain" / "final"
        fm = flops_model(load_checkpoint(final, family, len(load_tokenizer(final))))
        enc, dec = pretrain_tokens_per_sequence(family, 64, 0.3, 3.0)
        per_step[name] = fm.flops(Lengths.of_sequence(enc, dec, count=8))  # batch 8, no accumulation
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
        assert abs(a["flops"] - b["flops"]) <= max(one_step, 0.05 * a["flops"]), (
            stage,
            a["flops"],
            b["flops"],
            one_step,
        )
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
        assert abs(a["tokens"] - b["tokens"]) <= max(one_step, 0.05 * a["tokens"]), (
            stage,
            a["tokens"],
            b["tokens"],
            one_step,
        )
    # chatgpt's pretraining sequence is a full 64-token block; sora's has encoder and decoder tokens
    assert runs[GPT]["pretrain"]["tokens"] == 30 * 8 * 64
    assert runs[BART]["pretrain"]["steps"] < 30
    provenance = json.loads((matched_tokens["folder"] / "metrics.json").read_text(encoding="utf-8"))["provenance"]
    assert provenance["match"] == "tokens"


# ------------------------------------------------------------------------------------ seeds


def test_seeds_report_mean_and_std(root):
    result = ok(
        textgen(
            ["compare", "--recipe", f"recipes/{GPT}.yaml", "--seeds", "2", "pretrain.steps=10", "finetune.steps=10"],
            cwd=root,
        )
    )
    folder = report_folder(result, root)
    runs = {seed: [summary(root, f"{GPT}-seed{seed}", stage) for stage in STAGES] for seed in (7, 8)}
    assert [r[0]["seed"] for r in runs.values()] == [7, 8]
    by_json = records(folder)
    assert {model for (model, _), r in by_json.items() if r["kind"] == "model"} == {
        GPT
    }  # one column: the recipe, over its seeds
    for metric in ("bleu", "chrf", "rougeL", "bits_per_byte", "val_loss", "parameters"):
        assert by_json[(GPT, metric)]["n_seeds"] == 2, metric
        assert by_json[(GPT, metric)]["std"] is not None, metric
    losses = [r[-1]["final_val_loss"] for r in runs.values()]
    assert losses[0] != losses[1]  # two seeds, two models
    assert by_json[(GPT, "val_loss")]["value"] == pytest.approx(statistics.fmean(losses))
    assert by_json[(GPT, "val_loss")]["std"] == pytest.approx(statistics.stdev(losses))
    bleus = [eval_report(root, f"{GPT}-seed{seed}")["metrics"]["bleu"] for seed in (7, 8)]
    assert by_json[(GPT, "bleu")]["std"] == pytest.approx(statistics.stdev(bleus), abs=1e-12)
    markdown = (folder / "report.md").read_text(encoding="utf-8")
    assert " ± " in markdown and "or the mean ± std over seeds" in markdown
    assert f"{GPT} (seed 7): FLAGGED" in markdown and f"{GPT} (seed 8): FLAGGED" in markdown
    assert json.loads((folder / "metrics.json").read_text(encoding="utf-8"))["provenance"]["seeds"] == [7, 8]


# ------------------------------------------------------------------------------------ errors


def test_one_recipe_is_a_usage_error(root):
    usage_error(textgen(["compare", "--recipe", f"recipes/{GPT}.yaml"], cwd=root), "two or more")


def test_different_test_files_is_a_usage_error(root):
    result = textgen(["compare", "--recipe", f"recipes/{GPT}.yaml", "--recipe", "recipes/cmp-other.yaml"], cwd=root)
    usage_error(result, "different test files", "other-test.jsonl")
    assert not (root / "runs" / "cmp-other").exists()  # refused before any training


def test_unknown_match_is_a_usage_error(root):
    usage_error(textgen(["compare", *RECIPES, "--match", "nonsense"], cwd=root), "nonsense")


# ------------------------------------------------------------------------------------ significance (no training)


def fake_arm(label: str, seeds: list[list[str]], ok: bool = True):
    """A column of one model per seed; its BLEU cell is the mean over seeds, as build_columns makes it."""
    from textgen_cli.comparison.columns import Cell, Column, Model
    from textgen_cli.metrics import compute_metrics

    models = [
        Model(label, None, "finetune", k, predictions=p, eval=SimpleNamespace(verdict={"ok": ok}))  # type: ignore[arg-type]
        for k, p in enumerate(seeds)
    ]
    scores = [compute_metrics(["bleu"], p, REFERENCES)["bleu"]["score"] for p in seeds]
    return Column(label, models, {"bleu": Cell(sum(scores) / len(scores))})


REFERENCES = [f"the ship sailed at dawn number {i} from the old harbour" for i in range(40)]


def noisy(k: int) -> list[str]:
    """Predictions that get about k of every 4 references right, the rest garbled."""
    return [r if (i + k) % 4 < k else "a ship at noon " + str(i) for i, r in enumerate(REFERENCES)]


def test_two_level_bootstrap_with_one_seed_is_the_paired_bootstrap():
    from textgen_cli.metrics import paired_bootstrap, two_level_bootstrap

    a, b = noisy(3), noisy(2)
    two = two_level_bootstrap("bleu", [a], [b], REFERENCES, n_resamples=300, seed=7)
    paired = paired_bootstrap("bleu", a, b, REFERENCES, n_resamples=300, seed=7)
    assert two["diff"] == pytest.approx(paired["diff"])
    assert two["seeds"] == [1, 1] and 0 <= two["p"] < 0.05


def test_two_level_bootstrap_covers_training_noise():
    """Arm A's seeds disagree wildly (one good, one bad): resampling seeds widens the interval of the
    difference well beyond what resampling the test examples of the seed means would give."""
    from textgen_cli.metrics import two_level_bootstrap

    steady = two_level_bootstrap("chrf", [noisy(2), noisy(2)], [noisy(1), noisy(1)], REFERENCES, 400, 3)
    shaky = two_level_bootstrap("chrf", [noisy(4), noisy(0)], [noisy(1), noisy(1)], REFERENCES, 400, 3)
    width = {name: r["diff"]["high"] - r["diff"]["low"] for name, r in (("steady", steady), ("shaky", shaky))}
    assert width["shaky"] > 2 * width["steady"]
    assert shaky["diff"]["low"] < 0 < shaky["diff"]["high"]  # the seeds' spread swallows the lead


def test_holm_against_the_hand_computed_procedure():
    from textgen_cli.metrics import holm

    # sorted p: 0.01 <= 0.05/3 rejected; 0.03 > 0.05/2 stops there, so 0.04 is kept too
    assert holm({"a": 0.04, "b": 0.01, "c": 0.03}) == {"a": False, "b": True, "c": False}
    assert holm({"a": 0.01, "b": 0.02}) == {"a": True, "b": True}  # 0.01 <= 0.025, 0.02 <= 0.05


def test_one_legend_stars_only_a_clean_tested_lead():
    """`*` needs two or more seeds per arm, a tested significant lead, an unflagged leader and
    unconfounded arms; `n.s.` a tested lead inside the noise; `†` everything else, with the reason.
    Never `* n.s.`."""
    from textgen_cli.comparison.columns import lead_mark
    from textgen_cli.comparison.significance import decide, row_lead

    def marks(columns, confounded=()):
        lead = row_lead(columns, "bleu", True, REFERENCES, 300, 1)
        row = {"row": "bleu", "label": "BLEU", **vars(lead), "withheld": None}
        decide([row], columns, "bleu", list(confounded))
        return lead_mark(row), row

    good, weak = [noisy(4), noisy(4), noisy(4)], [noisy(1), noisy(1), noisy(1)]
    assert marks([fake_arm("good", good), fake_arm("weak", weak)])[0] == "*"
    mark, row = marks([fake_arm("good", good[:1]), fake_arm("weak", weak[:1])])
    assert mark == "†" and row["withheld"].startswith("one seed per arm")
    mark, row = marks([fake_arm("good", good, ok=False), fake_arm("weak", weak)])
    assert mark == "†" and "flagged" in row["withheld"]
    mark, row = marks([fake_arm("good", good), fake_arm("weak", weak)], ["positions learned absolute vs rotary"])
    assert mark == "†" and row["withheld"] == "confounded: positions learned absolute vs rotary"
    mark, row = marks([fake_arm("good", [noisy(4), noisy(0)]), fake_arm("weak", [noisy(1), noisy(2)])])
    assert mark == "n.s." and not row["significant"]


def test_match_total_budget_across_different_stage_lists(tmp_path, monkeypatch):
    """--match with `[finetune]` against `[pretrain, finetune]`: the shorter recipe's finetune gets the
    first recipe's whole budget (pretrain + finetune); same-structure recipes stay matched per stage.
    Costs and training are stubbed: this checks the arithmetic and the order, not a model."""
    from textgen_cli.comparison import matching
    from textgen_cli.recipe import load_recipe

    base = (
        "model: {{family: chatgpt}}\nstages: {stages}\npretrain: {{steps: 100}}\nfinetune: {{steps: 50}}\ntrain: {{batch_size: {batch}}}\n"
        "data: {{pretrain: {{train: p.txt}}, finetune: {{train: f.jsonl, validation: f.jsonl, test: f.jsonl}}}}\n"
    )
    for name, stages, batch in (
        ("full", "[pretrain, finetune]", 8),
        ("twin", "[pretrain, finetune]", 16),
        ("short", "[finetune]", 8),
    ):
        (tmp_path / f"{name}.yaml").write_text(base.format(stages=stages, batch=batch), encoding="utf-8")
    entries = [load_recipe(str(tmp_path / f"{name}.yaml")) for name in ("full", "twin", "short")]
    # per-step cost: pretrain 3.0, finetune 2.0, twice that at batch 16
    monkeypatch.setattr(
        matching,
        "step_cost",
        lambda loaded, stage, match: (3.0 if stage == "pretrain" else 2.0) * loaded.recipe.train.batch_size / 8,
    )
    trained: list[tuple[str, str, int]] = []
    monkeypatch.setattr(matching, "stage_done", lambda loaded, stage: False)
    monkeypatch.setattr(
        matching,
        "run_stage",
        lambda loaded, stage: trained.append((loaded.name, stage, getattr(loaded.recipe, stage).steps)),
    )
    matched, reused = matching.train_all(entries, "flops")
    # full: 100 * 3 + 50 * 2 = 400; twin per stage: 300 / 6 = 50 pretrain, 100 / 4 = 25 finetune
    # short: its only stage gets all 400 at 2 per step = 200 finetune steps
    assert trained == [
        ("full", "pretrain", 100),
        ("twin", "pretrain", 50),
        ("full", "finetune", 50),
        ("twin", "finetune", 25),
        ("short", "finetune", 200),
    ]
    assert matched[2].recipe.finetune.steps == 200 and reused[("short", "finetune")] is False
    # the last stage gets what the earlier ones leave; a budget already spent is a usage error
    assert matching.last_stage_steps(400.0, [("pretrain", 3.0, 20), ("finetune", 2.0, 0)]) == 170
    with pytest.raises(matching.UserError, match="more than the first recipe's whole budget"):
        matching.last_stage_steps(400.0, [("pretrain", 3.0, 200), ("finetune", 2.0, 0)], "x")


def test_pretraining_effect_is_a_paired_bootstrap_between_the_two_models(tmp_path):
    """A model with pretraining behind it against one without: pretrained minus scratch on BLEU and
    chrF with paired-bootstrap intervals; the better model here copies the references."""
    from textgen_cli.comparison.collect import pretraining_effects
    from textgen_cli.comparison.columns import Column, Model, effect_lines

    references = [f"the ship sailed at dawn number {i} from the harbour" for i in range(30)]
    (tmp_path / "predictions.jsonl").write_text(
        "".join(json.dumps({"reference": r}) + "\n" for r in references), encoding="utf-8"
    )

    def model(label: str, stages: list[str], predictions: list[str]) -> Model:
        m = Model(
            label=label,
            loaded=None,
            stage="finetune",
            seed=1,
            summaries=[SimpleNamespace(stage=s, flops=1e9) for s in stages],
            predictions=predictions,
        )  # type: ignore[arg-type]
        m.eval_dir = tmp_path
        return m

    good = model("pre", ["pretrain", "finetune"], references)
    bad = model("scratch", ["finetune"], ["nothing at all"] * 30)
    effects = pretraining_effects([Column("pre", [good]), Column("scratch", [bad])], n_resamples=200, seed=1)
    assert len(effects) == 1
    effect = effects[0]
    assert (effect["pretrained"], effect["scratch"], effect["answer"]) == ("pre", "scratch", "pretraining helped")
    assert effect["versus"]["bleu"]["low"] > 0 and effect["flops"] == {"pretrained": 2e9, "scratch": 1e9}
    assert effect_lines(effects)[0].startswith("does pretraining help? pretraining helped: pre minus scratch: BLEU +")
    # no pair without a pretraining difference
    assert (
        pretraining_effects(
            [Column("a", [good]), Column("b", [model("b", ["pretrain", "finetune"], references)])],
            n_resamples=50,
            seed=1,
        )
        == []
    )


def test_the_controlled_line_names_the_declared_factors_that_differ():
    from textgen_cli.comparison.columns import controlled_line

    assert controlled_line([]) == "controlled: the arms differ only in the family (settings below)"
    assert controlled_line([], ["learning rate"]) == (
        "controlled: the arms differ only in the family and the declared factor learning rate (settings below)"
    )
    assert controlled_line(["norm pre vs post"], ["learning rate"]).startswith(
        "CONFOUNDED: the arms differ in more than the family: norm pre vs post"
    )
