"""pretrain then finetune through the installed `textgen` entry point, for both families, on tiny data.

The runs are made once per session (conftest.trained) and inspected by many small tests.
"""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import trained_run
from harness import textgen

pytestmark = pytest.mark.slow

STAGES = ("pretrain", "finetune")
AUTO = {"sora": "AutoModelForSeq2SeqLM", "chatgpt": "AutoModelForCausalLM"}
METRIC_KEYS = {"step", "loss", "lr", "tokens", "tokens_per_s", "elapsed_s"}


def read_metrics(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def completed(trained, stage):
    result = getattr(trained, stage)
    assert result.returncode == 0, f"{trained.family} {stage} failed:\n{result.stderr[-3000:]}"
    return result


@pytest.mark.parametrize("stage", STAGES)
def test_stage_exits_0_and_prints_json(trained, stage):
    result = completed(trained, stage)
    summary = json.loads(result.stdout)
    assert summary["stage"] == stage
    assert summary["family"] == trained.family
    on_disk = json.loads((trained.stage_dir(stage) / "summary.json").read_text())
    assert on_disk == summary


@pytest.mark.parametrize("stage", STAGES)
def test_validation_loss_goes_down(trained, stage):
    summary = json.loads(completed(trained, stage).stdout)
    assert summary["final_val_loss"] < summary["initial_val_loss"], summary


@pytest.mark.parametrize("stage", STAGES)
def test_summary_has_the_run_facts(trained, stage):
    completed(trained, stage)
    summary = json.loads((trained.stage_dir(stage) / "summary.json").read_text())
    assert summary["parameters"] > 0
    assert summary["tokens"] > 0
    assert summary["wall_time_s"] > 0
    assert summary["peak_memory_mb"] > 0
    assert summary["seed"] == 7
    assert summary["steps"] == 40
    for package in ("textgen", "python", "torch", "transformers", "tokenizers"):
        assert summary["versions"][package], package
    import torch
    import transformers

    assert summary["versions"]["torch"] == torch.__version__
    assert summary["versions"]["transformers"] == transformers.__version__


@pytest.mark.parametrize("stage", STAGES)
def test_metrics_jsonl(trained, stage):
    completed(trained, stage)
    lines = read_metrics(trained.stage_dir(stage) / "metrics.jsonl")
    train_lines = [line for line in lines if "loss" in line]
    assert [line["step"] for line in train_lines] == list(range(5, 41, 5))  # log_every=5, 40 steps
    for line in train_lines:
        assert METRIC_KEYS <= set(line), line
        assert line["loss"] > 0 and line["lr"] > 0 and line["tokens_per_s"] > 0 and line["elapsed_s"] >= 0
    tokens = [line["tokens"] for line in train_lines]
    assert tokens == sorted(tokens) and tokens[0] > 0
    assert tokens[-1] == json.loads((trained.stage_dir(stage) / "summary.json").read_text())["tokens"]
    val_lines = [line for line in lines if "val_loss" in line]
    assert [line["step"] for line in val_lines] == [0, 20, 40]  # start, eval_every=20, end


def test_run_directory_is_committed_without_partial(trained):
    for stage in STAGES:
        completed(trained, stage)
        folder = trained.stage_dir(stage)
        assert (folder / "final").is_dir()
        assert (folder / "recipe.yaml").is_file()
        assert not folder.with_name(stage + ".partial").exists()
    assert not list((trained.cwd / "runs").rglob("*.partial"))


@pytest.mark.parametrize("stage", STAGES)
def test_final_checkpoint_reloads_with_plain_transformers(trained, stage):
    import torch
    import transformers
    from transformers import AutoTokenizer

    from textgen_cli.models import load_checkpoint

    completed(trained, stage)
    final = trained.stage_dir(stage) / "final"
    tokenizer = AutoTokenizer.from_pretrained(str(final))
    plain = getattr(transformers, AUTO[trained.family]).from_pretrained(str(final)).eval()
    ours = load_checkpoint(final, trained.family, len(tokenizer)).eval()
    assert type(plain) is type(ours)
    assert plain.config.is_encoder_decoder == (trained.family == "sora")
    assert plain.get_input_embeddings().weight.shape[0] == len(tokenizer) == 400
    assert plain.config.max_position_embeddings == 64

    ids = torch.tensor([tokenizer("Call me Ishmael. It was the whale.", add_special_tokens=False)["input_ids"]])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if trained.family == "sora":
        inputs["decoder_input_ids"] = torch.tensor([[tokenizer.bos_token_id, *ids[0, :5].tolist()]])
    with torch.no_grad():
        a, b = plain(**inputs).logits, ours(**inputs).logits
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    summary = json.loads((trained.stage_dir(stage) / "summary.json").read_text())
    assert summary["parameters"] == sum(p.numel() for p in plain.parameters())
    assert plain.generation_config.eos_token_id == tokenizer.eos_token_id
    assert plain.generation_config.pad_token_id == tokenizer.pad_token_id


def test_both_stages_share_the_tokenizer_and_its_chat_template(trained):
    from transformers import AutoTokenizer

    from textgen_cli.objectives import ChatEncoder

    completed(trained, "finetune")
    pre = AutoTokenizer.from_pretrained(str(trained.stage_dir("pretrain") / "final"))
    fine = AutoTokenizer.from_pretrained(str(trained.stage_dir("finetune") / "final"))
    assert pre.get_vocab() == fine.get_vocab()
    messages = [
        {"role": "system", "content": "Modern English."},
        {"role": "user", "content": "And God said"},
        {"role": "assistant", "content": "God said"},
    ]
    ids = fine.apply_chat_template(messages, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    assert ChatEncoder(fine).encode(messages)[0] == ids


def test_finetune_starts_from_the_pretrain_output(trained):
    summary = json.loads(completed(trained, "finetune").stdout)
    assert summary["init_from"].endswith("pretrain/final")
    pretrain = json.loads(completed(trained, "pretrain").stdout)
    # the finetune's validation loss before training is better than a random model's (~ln 400 = 6.0)
    assert summary["initial_val_loss"] < pretrain["initial_val_loss"]


def test_same_seed_same_losses(workspace, tmp_path):
    """A second identical chatgpt pretrain (other run root, fresh tokenizer cache) logs identical losses."""
    first = trained_run(workspace, "chatgpt")
    completed(first, "pretrain")
    result = textgen(
        ["pretrain", "--recipe", "recipe/tiny-chatgpt.yaml", "run.root=runs-again", "--json"],
        cwd=workspace,
        cache=tmp_path / "cache",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tokenizer: training" in result.stderr  # really a fresh tokenizer, not the cached one
    a = read_metrics(first.stage_dir("pretrain") / "metrics.jsonl")
    b = read_metrics(workspace / "runs-again" / "tiny-chatgpt" / "pretrain" / "metrics.jsonl")
    assert [line.get("loss") for line in a] == [line.get("loss") for line in b]
    assert [line.get("val_loss") for line in a] == [line.get("val_loss") for line in b]
    assert [line.get("tokens") for line in a] == [line.get("tokens") for line in b]


def test_finetune_without_pretrain_output_suggests_pretrain(workspace):
    result = textgen(["finetune", "--recipe", "recipe/tiny-chatgpt.yaml", "run.name=never-pretrained"], cwd=workspace)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "textgen pretrain" in result.stderr
    assert not (workspace / "runs" / "never-pretrained").exists() or not list(
        (workspace / "runs" / "never-pretrained").rglob("*")
    )


def test_failed_run_leaves_no_partial_and_keeps_the_previous_result(workspace, tmp_path):
    """A run that fails mid-training (a learning rate that makes the loss non-finite) exits non-zero,
    leaves no `.partial` folder, and does not touch the finished result of an earlier run."""
    first = trained_run(workspace, "chatgpt")
    completed(first, "pretrain")
    root = tmp_path / "runs"
    shutil.copytree(first.stage_dir("pretrain"), root / "tiny-chatgpt" / "pretrain")
    before = (root / "tiny-chatgpt" / "pretrain" / "summary.json").read_text()
    result = textgen(
        [
            "pretrain",
            "--recipe",
            "recipe/tiny-chatgpt.yaml",
            f"run.root={root}",
            "train.lr=1e30",
            "train.warmup_steps=0",
            "pretrain.steps=10",
        ],
        cwd=workspace,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "non-finite" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(root.rglob("*.partial")), list(root.rglob("*"))
    assert (root / "tiny-chatgpt" / "pretrain" / "summary.json").read_text() == before
    assert (root / "tiny-chatgpt" / "pretrain" / "final" / "model.safetensors").is_file()
