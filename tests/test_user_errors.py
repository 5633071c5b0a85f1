"""Bad input (docs/reliability.md, "Bad input"): a bad recipe, data file, checkpoint, tokenizer or path
exits 2 with one message naming the culprit, no traceback, nothing half-written and an earlier
finished run untouched byte for byte; too-long examples are truncated with a counting warning."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from harness import CONTEXT, textgen

pytestmark = pytest.mark.usefixtures("one_torch_thread")


BAD_RECIPES = {
    # name: (recipe text, substrings the message must contain)
    "yaml syntax": ("model: {{family: chatgpt}}\ntrain:\n  lr: 0.001: 2\n{data}", ["line 3", "bad.yaml"]),
    "unknown family": ("model: {{family: gpt5}}\n{data}", ["model.family", "gpt5", "sora, chatgpt"]),
    "unknown metric": (
        "model: {{family: chatgpt}}\nstages: [pretrain]\neval: {{metrics: [bleu, nosuchmetric]}}\n{data}",
        ["bad.yaml", "eval.metrics", "unknown metric 'nosuchmetric'"],
    ),
    "missing interpolation": (
        "model: {{family: chatgpt}}\ntrain: {{lr: '${{train.peak_lr}}'}}\n{data}",
        ["train.lr", "train.peak_lr"],
    ),
}


@pytest.mark.parametrize("case", BAD_RECIPES)
def test_a_bad_recipe_exits_2_and_touches_nothing(case, good, reliability_ws, tmp_path):
    text, expected = BAD_RECIPES[case]
    data = f"run: {{name: good}}\ndata: {{pretrain: {{train: {reliability_ws / 'data' / 'train.txt'}}}}}\n"
    (tmp_path / "bad.yaml").write_text(text.format(data=data), encoding="utf-8")
    before = good()
    done = textgen(["pretrain", "--recipe", "bad.yaml"], cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    for part in expected:
        assert part in done.stderr
    assert good() == before


def _empty_file(tmp: Path, reliability_ws: Path):
    (tmp / "empty.txt").write_text("")
    return "pretrain", [f"data.pretrain.train={tmp / 'empty.txt'}"], ["empty.txt", "is empty"]


def _split_too_small(tmp: Path, reliability_ws: Path):
    (tmp / "short.txt").write_text("Call me Ishmael.\n")
    return (
        "pretrain",
        [f"data.pretrain.train={tmp / 'short.txt'}"],
        ["training split gives 0 examples", "train.batch_size=8"],
    )


def _long_example(tmp: Path, reliability_ws: Path) -> Path:
    rows = (reliability_ws / "data" / "ft-train.jsonl").read_text()
    long = json.dumps({"id": "far-too-long", "source": "Call me Ishmael.", "target": "Call me Ishmael. " * 40})
    path = tmp / "ft-long.jsonl"
    path.write_text(rows + long + "\n")
    return path


def _too_long_error(tmp: Path, reliability_ws: Path):
    return (
        "finetune",
        [f"data.finetune.train={_long_example(tmp, reliability_ws)}", "data.too_long=error"],
        ["far-too-long", f"model.context={CONTEXT}", "data.too_long=error"],
    )


def _init_from_missing(tmp: Path, reliability_ws: Path):
    return "finetune", [f"model.init_from={tmp / 'no-such-model'}"], ["no-such-model", "does not exist"]


def _corrupt_weights(tmp: Path, reliability_ws: Path):
    model = tmp / "corrupt-model"
    shutil.copytree(reliability_ws / "runs" / "small-chatgpt" / "pretrain" / "final", model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return "finetune", [f"model.init_from={model}"], ["corrupt-model", "cannot load the weights"]


def _vocab_mismatch(tmp: Path, reliability_ws: Path):
    from textgen_cli.data.tokenizer import train_tokenizer

    model = tmp / "other-tokenizer"
    shutil.copytree(reliability_ws / "runs" / "small-chatgpt" / "pretrain" / "final", model)
    texts = (reliability_ws / "data" / "train.txt").read_text().splitlines()
    train_tokenizer(texts, vocab_size=320, min_frequency=2).save_pretrained(model)
    return (
        "finetune",
        [f"model.init_from={model}"],
        ["other-tokenizer", "token embeddings but its tokenizer has 320 tokens"],
    )


def _other_family(tmp: Path, reliability_ws: Path):
    return (
        "finetune",
        [f"model.init_from={reliability_ws / 'runs' / 'small-sora' / 'pretrain' / 'final'}"],
        ["is a `sora` model", "model.family is `chatgpt`"],
    )


def _test_split_missing(tmp: Path, reliability_ws: Path):
    # read only after training, so it is checked before the first step (issue 24)
    return "finetune", [f"data.finetune.test={tmp / 'no-such-test.jsonl'}"], ["no-such-test.jsonl", "does not exist"]


def _root_is_a_file(tmp: Path, reliability_ws: Path):
    (tmp / "afile").write_text("not a directory")
    return "pretrain", ["run.root=afile"], ["'afile' is a file"]


BAD_INPUTS = {
    "empty data file": _empty_file,
    "split smaller than a batch": _split_too_small,
    "too long with too_long=error": _too_long_error,
    "init_from missing": _init_from_missing,
    "corrupted safetensors": _corrupt_weights,
    "tokenizer of another vocabulary": _vocab_mismatch,
    "checkpoint of the other family": _other_family,
    "run.root is a file": _root_is_a_file,
    "test split missing": _test_split_missing,
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_exits_2_and_leaves_earlier_results_untouched(case, good, reliability_ws, textgen_here, tmp_path):
    stage, overrides, expected = BAD_INPUTS[case](tmp_path, reliability_ws)
    before = good()
    result = textgen_here(
        stage,
        "--recipe",
        str(reliability_ws / "chatgpt.yaml"),
        "run.name=good",
        f"{stage}.steps=2",
        *overrides,
        cwd=tmp_path,
    )
    assert result.rc == 2, result.err
    assert "error: " in result.err and "Traceback" not in result.err
    for part in expected:
        assert part in result.err
    assert good() == before  # no <stage>.partial, no lock, the finished run byte for byte


def test_too_long_examples_are_truncated_with_a_counting_warning(small_runs, reliability_ws, textgen_here, tmp_path):
    long = _long_example(tmp_path, reliability_ws)
    result = textgen_here(
        "finetune",
        "--recipe",
        str(reliability_ws / "chatgpt.yaml"),
        "run.name=trunc",
        "finetune.steps=2",
        f"data.finetune.train={long}",
        f"model.init_from={small_runs / 'small-chatgpt' / 'pretrain' / 'final'}",
        "--json",
        cwd=tmp_path,
    )
    assert result.rc == 0, result.err
    assert re.search(
        rf"warning: .*\b1 \w* ?examples were longer than model.context={CONTEXT} and were truncated", result.err
    ), result.err
    assert "dropped" not in result.err  # the long example keeps some of its target to learn from
    assert json.loads(result.out)["truncated_examples"] == 1
