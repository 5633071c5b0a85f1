"""summary.json and eval.json as types (textgen_cli/core/results.py): what is written is read back the same,
and a file with a key missing or of the wrong kind is refused with the file and the key named."""

from __future__ import annotations

import json
import math

import pytest

from textgen_cli.core.errors import UserError
from textgen_cli.core.results import EvalReport, RunSummary


def summary_values() -> dict:
    return {
        "stage": "finetune", "recipe": "r.yaml", "recipe_name": "r", "settings_hash": "s", "stage_hash": "h", "family": "chatgpt",
        "parameters": 1000, "steps": 2, "batch_size": 4, "grad_accum": 1, "train_examples": 8, "tokens": 64, "encoder_tokens": 0,
        "decoder_tokens": 64, "flops": 123456789, "wall_time_s": 1.5, "train_time_s": 1.0, "tokens_per_s": 64.0, "final_train_loss": None,
        "initial_val_loss": 5.0, "final_val_loss": float("nan"), "final_val_ppl": 4.0, "skipped_steps": 0, "resumed": False,
        "peak_memory_mb": 100.0, "device": "cpu", "processes": 1, "rank_weight_hashes": ["abc"], "strategy": "single", "global_batch": 4,
        "seed": 1, "versions": {"torch": "2"}, "run_dir": "runs/r/finetune", "final_dir": "runs/r/finetune/final",
        "init_from": "runs/r/pretrain/final", "task": "chat", "lora": {"rank": 2},
    }  # fmt: skip


def test_a_summary_reads_back_as_written_with_the_stage_notes_last(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary_values(), indent=2), encoding="utf-8")
    summary = RunSummary.read(path)
    assert (
        summary.init_from == "runs/r/pretrain/final" and summary.task == "chat" and summary.notes["lora"] == {"rank": 2}
    )
    assert summary.flops == 123456789 and summary.final_train_loss is None and math.isnan(summary.final_val_loss)
    written = summary.to_dict()
    assert list(written) == list(summary_values())  # the same keys in the same order
    assert json.dumps(written) == json.dumps(summary_values())


def test_a_summary_without_the_keys_older_files_lack_still_reads(tmp_path):
    values = summary_values()
    del values["flops"], values["stage_hash"], values["init_from"]
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(values), encoding="utf-8")
    summary = RunSummary.read(path)
    assert (summary.flops, summary.stage_hash, summary.init_from) == (0.0, None, None)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda v: v.pop("final_val_loss"),
            r"summary\.json: key 'final_val_loss' is missing \(expected float\); was it written by textgen\?",
        ),
        (lambda v: v.update(tokens="many"), r"summary\.json: key 'tokens' is \"many\", expected int"),
        (lambda v: v.update(resumed=1), r"summary\.json: key 'resumed' is 1, expected bool"),
    ],
)
def test_a_summary_with_a_missing_or_wrong_key_names_the_file_and_the_key(tmp_path, change, message):
    values = summary_values()
    change(values)
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(values), encoding="utf-8")
    with pytest.raises(UserError, match=message):
        RunSummary.read(path)


def test_an_unreadable_file_is_named(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match=r"eval\.json: not valid JSON"):
        EvalReport.read(path)
    with pytest.raises(UserError, match=r"missing\.json: cannot be read"):
        EvalReport.read(tmp_path / "missing.json")


def test_an_eval_report_reads_back_as_written(tmp_path):
    report = EvalReport(
        model="m", stage=None, family="sora", recipe="r.yaml", recipe_name="r", settings_hash="s", eval_hash="e", split="test",
        n_examples=3, task="pairs", metrics={"bleu": 1.0}, likelihood={"bits_per_byte": None}, generation={"tokens_per_s": 5.0},
        eval_time_s=1.0, examples_per_s=3.0, verdict={"ok": True}, files={"eval": "eval.json"},
    )  # fmt: skip
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({**report.to_dict(), "from_a_newer_version": 1}), encoding="utf-8")
    assert EvalReport.read(path) == report
    values = report.to_dict()
    del values["metrics"]
    path.write_text(json.dumps(values), encoding="utf-8")
    with pytest.raises(UserError, match=r"eval\.json: key 'metrics' is missing \(expected dict\[str, float\]\)"):
        EvalReport.read(path)
