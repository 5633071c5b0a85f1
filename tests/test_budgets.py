"""`textgen compare --budget`: the stated budget for every arm, the curve across budgets, the lr grid.

One tiny matched pair (T5Gemma 1+1 against Gemma 2, 2 layers) is compared at two FLOPs budgets with
two seeds, then again with the recipes in the other order (nothing retrained: the budgets, not the
flag order, set the steps), and once with a learning-rate grid judged on validation.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest

from harness import SHIPPED, cli_env, end_to_end_recipe, merged, ok, save_recipe, textgen, textgen_exe, usage_error

pytestmark = pytest.mark.slow

ED, DO = "bud-t5gemma", "bud-gemma2"
BUDGETS = "flops=6e9,1.2e10"


def pair_recipe(root: Path, name: str, family: str, arch: str, layers: int) -> None:
    values = merged(
        end_to_end_recipe(family),
        {
            "stages": ["finetune"],
            "model": {"arch": arch, "layers": layers, "dropout": 0.0, "init_from": "scratch"},
            "prompt": {"system": ""},
            "data": {
                "finetune": {
                    "train": "../data/train.jsonl",
                    "validation": "../data/val.jsonl",
                    "test": "../data/test.jsonl",
                },
            },
            "tokenizer": {"include_finetune_data": True},
            "train": {"min_lr_ratio": 1.0, "eval_every": 1000},
            "generate": {"max_new_tokens": 12},
            # input_check covers every test example: each reference's NLL is kept, for --primary bits_per_byte
            "eval": {"bootstrap": 100, "input_check": 12},
        },
    )
    values["data"].pop("pretrain", None)
    save_recipe(root / "recipes" / f"{name}.yaml", values)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("budgets")
    (root / "data").mkdir()
    (root / "recipes").mkdir()
    rows = (SHIPPED / "data" / "bible-modern" / "train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    rows.sort(key=lambda line: len(line))
    (root / "data" / "train.jsonl").write_text("".join(rows[:160]), encoding="utf-8")
    (root / "data" / "val.jsonl").write_text("".join(rows[160:172]), encoding="utf-8")
    (root / "data" / "test.jsonl").write_text("".join(rows[172:184]), encoding="utf-8")
    pair_recipe(root, ED, "sora", "t5gemma", 1)
    pair_recipe(root, DO, "chatgpt", "gemma2", 2)
    return root


def steps_logged(stderr: str) -> dict[tuple[str, str, str], int]:
    found = re.findall(r"compare: (\S+) seed (\d+) at flops (\S+): (\d+) finetune steps", stderr)
    return {(arm, seed, budget): int(steps) for arm, seed, budget, steps in found}


def compare(root: Path, first: str, second: str, *flags: str):
    """`textgen compare` of two of this module's recipes with `flags`, expected to succeed."""
    return ok(
        textgen(
            ["compare", "--recipe", f"recipes/{first}.yaml", "--recipe", f"recipes/{second}.yaml", *flags], cwd=root
        )
    )


@pytest.fixture(scope="module")
def swept(root):
    result = compare(root, ED, DO, "--budget", BUDGETS, "--seeds", "2")
    folder = root / re.search(r"report: (\S+)/report\.html", result.stdout).group(1)
    return {"result": result, "folder": folder}


def test_every_arm_gets_the_stated_budget_and_the_curve(swept):
    out, folder = swept["result"].stdout, swept["folder"]
    record = json.loads((folder / "budgets.json").read_text(encoding="utf-8"))
    assert [b["budget"]["value"] for b in record["budgets"]] == [6e9, 1.2e10]
    for point in record["budgets"]:
        for arm in (ED, DO):
            assert len(point["per_seed"][arm]) == 2  # two seeds per arm and budget
            # whole steps match a budget to within one step: the measured FLOPs are close to it
            assert point["flops"][arm] == pytest.approx(point["budget"]["value"], rel=0.35)
        d = point["difference"]
        assert d["low"] <= d["score"] <= d["high"]
    assert record["crossover"].startswith(("crossover:", "no crossover:"))
    assert (folder / "primary_vs_flops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "budget: flops 6e+09" in out and "budget: flops 1.2e+10" in out
    assert "bleu across budgets" in out and record["crossover"] in out.replace("\n", " ")
    report = (folder / "report.md").read_text(encoding="utf-8")
    assert report.index("## Across budgets") < report.index("## Results")
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert page.index("<h2>Across budgets</h2>") < page.index("<h2>Results</h2>")
    assert "data:image/png;base64," in page[page.index("Across budgets") : page.index("<h2>Results</h2>")]


def test_the_matched_pair_is_reported_controlled_with_a_two_level_test(swept):
    out = swept["result"].stdout
    assert "controlled: the arms differ only in the family" in out and "CONFOUNDED" not in out
    settings = {s["name"]: s for s in json.loads((swept["folder"] / "metrics.json").read_text())["settings"]}
    assert settings["positions"]["values"] == ["rotary", "rotary"]
    assert settings["norm"]["values"] == ["pre+post-RMSNorm", "pre+post-RMSNorm"]
    assert settings["stack"]["values"] == ["encoder-decoder 1+1", "decoder-only 2"]
    assert "two-level bootstrap" in out


def test_a_budget_is_reached_by_continuing_one_run_bit_for_bit(root, swept):
    """Constant learning rate: each arm and seed is one run continued from budget to budget. The
    continued model equals a run trained straight to the larger budget's steps."""
    steps = steps_logged(swept["result"].stderr)
    small, large = steps[(DO, "7", "6e+09")], steps[(DO, "7", "1.2e+10")]
    assert 0 < small < large
    assert not (root / "runs" / f"{DO}-seed7-flops-6e+09").exists()  # no run of its own per budget
    direct = ok(
        textgen(
            [
                "finetune",
                "--recipe",
                f"recipes/{DO}.yaml",
                "run.name=direct",
                f"finetune.steps={large}",
                "eval.after_finetune=false",
            ],
            cwd=root,
        )
    )
    assert direct.returncode == 0

    def weights(name: str) -> str:
        return hashlib.sha256(
            (root / "runs" / name / "finetune" / "final" / "model.safetensors").read_bytes()
        ).hexdigest()

    assert weights(f"{DO}-seed7") == weights("direct")
    assert (root / "runs" / f"{DO}-seed7" / "budgets" / "flops-6e+09" / "eval.json").is_file()


def test_the_flag_order_changes_nothing(root, swept):
    """The same budgets with the recipes the other way round: the same steps per arm, every
    evaluation reused, nothing trained."""
    result = compare(root, DO, ED, "--budget", BUDGETS, "--seeds", "2")
    assert steps_logged(result.stderr) == steps_logged(swept["result"].stderr)
    assert "compare: training" not in result.stderr and "compare: evaluating" not in result.stderr


def test_arms_trained_in_parallel_processes_are_reused_by_the_report(root, swept):
    """`--arm NAME` in one process per arm: each trains and evaluates its own seeds at every budget
    and writes no report; the same command without --arm then trains and evaluates nothing."""
    study = ["--budget", BUDGETS, "--seeds", "2", "train.seed=21"]
    reports_before = set((root / "reports").iterdir())
    args = ["compare", "--recipe", f"recipes/{ED}.yaml", "--recipe", f"recipes/{DO}.yaml", *study]
    jobs = [
        subprocess.Popen(
            [textgen_exe(), *args, "--arm", arm],
            cwd=root,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for arm in (ED, DO)
    ]
    outputs = [job.communicate(timeout=600) for job in jobs]  # sets each job's returncode
    results = [ok(subprocess.CompletedProcess(job.args, job.returncode, *out)) for job, out in zip(jobs, outputs)]
    for arm, result in zip((ED, DO), results):
        trained = steps_logged(result.stderr)
        assert {key[:2] for key in trained} == {(arm, "21"), (arm, "22")}  # its own seeds only
        assert f"arm {arm}: 2 run(s) trained and evaluated at flops 6e+09, flops 1.2e+10" in result.stdout
    assert set((root / "reports").iterdir()) == reports_before  # no report from an --arm call
    full = compare(root, ED, DO, *study)
    assert "compare: training" not in full.stderr and "compare: evaluating" not in full.stderr
    assert steps_logged(full.stderr) == {**steps_logged(results[0].stderr), **steps_logged(results[1].stderr)}
    assert "report: " in full.stdout


def test_the_lr_grid_picks_on_validation(root, swept):
    result = compare(root, ED, DO, "--budget", "flops=6e9", "--seeds", "1", "--lr-grid", "1e-3,3e-3")
    folder = root / re.search(r"report: (\S+)/report\.html", result.stdout).group(1)
    grid = json.loads((folder / "lr_grid.json").read_text(encoding="utf-8"))
    assert grid["split"] == "validation"
    for arm in grid["arms"]:
        assert set(arm["scores"]) == {"0.001", "0.003"}
        assert arm["chosen"] == max((float(k) for k in arm["scores"]), key=lambda k: arm["scores"][f"{k:g}"])
        record = json.loads(
            (
                root / "runs" / f"{arm['arm']}-lr{arm['chosen']:g}" / "lr-grid-validation" / "eval-validation.json"
            ).read_text()
        )
        assert record["split"] == "validation" and record["metrics"]["bleu"] == arm["scores"][f"{arm['chosen']:g}"]
    assert "Learning rate per arm, from the same grid, by validation bleu (never test)" in result.stdout
    settings = {s["name"]: s for s in json.loads((folder / "metrics.json").read_text())["settings"]}
    assert settings["learning rate"]["values"] == [f"{a['chosen']:g}" for a in grid["arms"]]
    # picks from the same grid on validation are fair tuning: a different learning rate is no confound
    assert "CONFOUNDED" not in result.stdout and "controlled: the arms differ only in the family" in result.stdout
    # and when the picks differ, the line says so (the declared factor), in the terminal and the report
    if len(set(settings["learning rate"]["values"])) > 1:
        line = "controlled: the arms differ only in the family and the declared factor learning rate"
        assert line in result.stdout
        assert "differ only in the family and the declared factor learning rate" in (folder / "report.md").read_text()


def test_bits_per_byte_as_the_primary_metric(root, swept):
    """Dialogue is judged by the references' bits per byte: as --primary it gets the curve, the
    crossover (lower is better) and the two-level test, from the same runs and evaluations."""
    result = compare(root, ED, DO, "--budget", BUDGETS, "--seeds", "2", "--primary", "bits_per_byte")
    assert "compare: training" not in result.stderr and "compare: evaluating" not in result.stderr
    folder = root / re.search(r"report: (\S+)/report\.html", result.stdout).group(1)
    record = json.loads((folder / "budgets.json").read_text(encoding="utf-8"))
    assert record["primary_metric"] == "bits_per_byte"
    for point in record["budgets"]:
        where = f"budgets/{point['budget']['unit']}-{point['budget']['value']:.3g}/eval.json"
        seeds = sorted({seed for _, seed, _ in steps_logged(swept["result"].stderr)})  # the study's, no other's
        evals = {
            arm: [
                json.loads((root / "runs" / f"{arm}-seed{seed}" / where).read_text())["likelihood"]["bits_per_byte"]
                for seed in seeds
            ]
            for arm in (ED, DO)
        }
        # each arm's values are its evaluations' bits per byte, and the difference is their mean difference
        for arm in (ED, DO):
            assert len(evals[arm]) == 2 and sorted(point["per_seed"][arm]) == pytest.approx(
                sorted(evals[arm]), rel=1e-6
            )
        mean = {arm: sum(v) / len(v) for arm, v in evals.items()}
        diff = point["differences"][DO]
        # the same NLLs summed in another order (per example, then per seed): equal to float precision
        assert diff["score"] == pytest.approx(mean[ED] - mean[DO], rel=1e-4, abs=1e-6)
        assert diff["low"] <= diff["score"] <= diff["high"]
    leader = ED if record["budgets"][-1]["differences"][DO]["score"] < 0 else DO  # lower bits per byte leads
    assert f"{leader} leads" in record["crossover"]


def test_the_lr_grid_can_pick_by_bits_per_byte(root, swept):
    """Lower is better: each arm takes the learning rate with the lowest validation bits per byte
    (the grid's runs and validation evaluations of the BLEU grid are reused)."""
    result = compare(
        root, ED, DO, "--budget", "flops=6e9", "--seeds", "1", "--lr-grid", "1e-3,3e-3", "--primary", "bits_per_byte"
    )
    folder = root / re.search(r"report: (\S+)/report\.html", result.stdout).group(1)
    grid = json.loads((folder / "lr_grid.json").read_text(encoding="utf-8"))
    for arm in grid["arms"]:
        assert arm["chosen"] == min((float(k) for k in arm["scores"]), key=lambda k: arm["scores"][f"{k:g}"])
        record = json.loads(
            (
                root / "runs" / f"{arm['arm']}-lr{arm['chosen']:g}" / "lr-grid-validation" / "eval-validation.json"
            ).read_text()
        )
        assert record["likelihood"]["bits_per_byte"] == arm["scores"][f"{arm['chosen']:g}"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--budget", "flops"], "expected UNIT=VALUE"),
        (["--budget", "watts=3"], "expected UNIT=VALUE"),
        (["--budget", "flops=1e12,lots"], "'lots' is not a number"),
        (["--budget", "flops=-1"], "must be positive"),
        (["--budget", "flops=1e12", "--match", "flops"], "without --match"),
        (["--budget", "flops=1e12", "--primary", "val_loss"], "--primary val_loss"),
        (["--lr-grid", "fast"], "--lr-grid fast"),
        (["--budget", "flops=1e12", "--arm", "nope"], "--arm nope: expected one of the recipes' names"),
        (["--arm", ED], "give --budget too"),
    ],
)
def test_bad_budget_flags_are_usage_errors(root, args, expected):
    result = textgen(["compare", "--recipe", f"recipes/{ED}.yaml", "--recipe", f"recipes/{DO}.yaml", *args], cwd=root)
    usage_error(result, expected)
    assert not (root / "runs" / "never").exists()


def test_crossover_is_read_from_the_sign_of_the_difference():
    from textgen_cli.comparison.budgets import Budget, BudgetPoint, crossover

    def point(value: float, diff: float, half: float, seeds: int = 3) -> BudgetPoint:
        per_seed = {"ed": [1.0] * seeds, "do": [0.0] * seeds}
        return BudgetPoint(
            Budget("flops", value), per_seed, {}, {"do": {"score": diff, "low": diff - half, "high": diff + half}}
        )

    line = crossover(["ed", "do"], [point(1e12, 4.0, 1.0), point(1e13, -4.0, 1.0)])
    # the mean difference crosses zero halfway in log budget: sqrt(1e12 * 1e13) ~ 3.2e12
    assert line.startswith("crossover: ed leads below about flops 3.2e+12, do above")
    assert "every difference is beyond the noise" in line
    line = crossover(["ed", "do"], [point(1e12, 2.0, 3.0), point(1e13, 5.0, 1.0)])
    assert line == "no crossover: ed leads at every budget; the difference is inside the noise at flops 1e+12"
    # one seed: the interval says nothing about training noise, and the line says so
    line = crossover(["ed", "do"], [point(1e12, 4.0, 1.0, seeds=1)])
    assert line == (
        "no crossover: ed leads at flops 1e+12; every difference is beyond the test-set noise "
        "(one seed per arm: training noise not measured)"
    )
    # lower is better (bits per byte): a positive difference means the second arm leads
    line = crossover(["ed", "do"], [point(1e12, 4.0, 1.0), point(1e13, -4.0, 1.0)], higher=False)
    assert line.startswith("crossover: do leads below about flops 3.2e+12, ed above")


def test_with_more_arms_the_first_is_compared_with_each_other_one():
    from textgen_cli.comparison.budgets import Budget, BudgetPoint, crossover, curve_rows

    def point(value: float, versus_do: float, versus_plm: float) -> BudgetPoint:
        per_seed = {"ed": [1.0, 2.0, 3.0], "do": [0.0] * 3, "plm": [1.0] * 3}
        diffs = {
            "do": {"score": versus_do, "low": versus_do - 1, "high": versus_do + 1},
            "plm": {"score": versus_plm, "low": versus_plm - 1, "high": versus_plm + 1},
        }
        return BudgetPoint(Budget("flops", value), per_seed, dict.fromkeys(per_seed, value), diffs)

    points = [point(1e12, 4.0, 0.5), point(1e13, 3.0, -4.0)]
    lines = crossover(["ed", "do", "plm"], points).split("\n")
    assert lines[0] == "ed against do: no crossover: ed leads at every budget; every difference is beyond the noise"
    assert lines[1].startswith(
        "ed against plm: crossover: ed leads below about flops 1.3e+12, plm above"
    )  # 1e12 * 10 ** (0.5 / 4.5)
    assert lines[1].endswith("the difference is inside the noise at flops 1e+12")
    row = curve_rows(["ed", "do", "plm"], points)[1]
    assert row[0] == "flops 1e+13" and row[1].startswith("2.00 ± 1.00 (n=3")
    assert row[4:] == ["+3.00 [+2.00, +4.00]", "-4.00 [-5.00, -3.00]"]
