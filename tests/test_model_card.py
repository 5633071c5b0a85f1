"""final/README.md: an HF model card (metadata header the hub library reads, architecture, base
checkpoint, data, training figures, the recipe), rewritten with the evaluation table after finetune."""

from __future__ import annotations

import json

import yaml

from conftest import trained_run
from harness import textgen


def card_of(stage_dir):
    from huggingface_hub import ModelCard

    return ModelCard.load(stage_dir / "final" / "README.md")


def test_pretrain_and_finetune_cards(workspace):
    run = trained_run(workspace, "sora")
    assert run.finetune.returncode == 0, run.finetune.stderr
    pretrain, finetune = card_of(run.stage_dir("pretrain")), card_of(run.stage_dir("finetune"))

    meta = pretrain.data.to_dict()
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text2text-generation"
    assert meta["tags"] == ["textgen", "sora", "bart", "pretrain"]
    assert "base_model" not in meta and "datasets" not in meta  # from scratch, local files
    summary = json.loads((run.stage_dir("pretrain") / "summary.json").read_text())
    assert (
        f"- {summary['parameters']:,} parameters: 1 layer (encoder and decoder each), hidden size 32" in pretrain.text
    )
    assert "- started from: random weights (trained from scratch)" in pretrain.text
    assert "- train: `" in pretrain.text and "pretrain-train.txt`" in pretrain.text
    # the recipe block is the resolved recipe.yaml, whole
    recipe_block = pretrain.text.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(recipe_block) == yaml.safe_load((run.stage_dir("pretrain") / "recipe.yaml").read_text())

    assert finetune.data.to_dict()["tags"][-1] == "finetune"
    assert "- started from: `runs/tiny-sora/pretrain/final`" in finetune.text
    # no test split in this recipe: not evaluated after training. Other tests of the session may
    # evaluate this run on a test split of theirs, and then the card carries those scores
    stage = run.stage_dir("finetune")
    evaluated = (stage / "eval.json").is_file() or any(stage.glob("evals/*/eval.json"))
    assert ("## Evaluation" in finetune.text) == evaluated


def test_the_card_is_rewritten_with_the_evaluation_table(workspace, tmp_path):
    run = trained_run(workspace, "chatgpt")
    assert run.pretrain.returncode == 0, run.pretrain.stderr
    overrides = [
        "run.name=card-chatgpt",
        f"model.init_from={run.stage_dir('pretrain') / 'final'}",
        "data.finetune.test=recipe/data/finetune-val.jsonl",  # overrides are relative to the current directory
        "finetune.steps=2",
        "eval.bootstrap=20",
        "eval.max_examples=6",
    ]
    result = textgen(["finetune", "--recipe", f"recipe/{run.recipe.name}", *overrides, "--json"], cwd=workspace)
    assert result.returncode == 0, result.stderr
    stage = workspace / "runs" / "card-chatgpt" / "finetune"
    card = card_of(stage)
    assert card.data.to_dict()["pipeline_tag"] == "text-generation"
    report = json.loads((stage / "eval.json").read_text())
    assert "## Evaluation" in card.text and f"{report['n_examples']:,} examples" in card.text
    for metric, value in report["metrics"].items():
        assert f"| {metric} | {value:.4g} |" in card.text
    assert f"| bits per byte | {report['likelihood']['bits_per_byte']:.4f} |" in card.text


def test_a_checkpoint_from_the_hf_cache_is_named_as_base_model():
    from textgen_cli.training.model_card import hub_model_id, metadata

    cached = "/home/u/.cache/huggingface/hub/models--openai-community--gpt2/snapshots/607a30d783dfa663caf39e06633721c8d4cfcd7e"
    assert hub_model_id(cached) == "openai-community/gpt2"
    assert hub_model_id("/work/runs/sora/pretrain/final") is None
    recipe = {
        "model": {"family": "chatgpt", "init_from": cached},
        "data": {"finetune": {"train": "hf:acme/verses", "validation": "hf:/tmp/local-dir"}},
    }
    meta = metadata(recipe, "finetune", None)
    assert meta["base_model"] == "openai-community/gpt2"
    assert meta["datasets"] == ["acme/verses"]  # a local dataset folder is no hub name


def test_evaluate_puts_its_scores_in_the_card_of_a_run_that_was_not_evaluated(workspace, tmp_path):
    import shutil

    run = trained_run(workspace, "sora")
    assert run.finetune.returncode == 0, run.finetune.stderr
    stage = tmp_path / "copy" / "finetune"  # a copy: the session's run is shared with other tests
    shutil.copytree(run.stage_dir("finetune"), stage)
    from textgen_cli.core.results import RunSummary
    from textgen_cli.training.model_card import write_model_card

    write_model_card(stage, RunSummary.read(stage / "summary.json"))  # the card as training wrote it
    assert "## Evaluation" not in card_of(stage).text
    overrides = ["data.finetune.test=recipe/data/finetune-val.jsonl", "eval.bootstrap=20", "eval.max_examples=6"]
    args = ["evaluate", "--recipe", f"recipe/{run.recipe.name}", "--model", str(stage / "final"), *overrides]
    result = textgen([*args, "--json"], cwd=workspace)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    card = card_of(stage)
    assert "## Evaluation" in card.text and f"{report['n_examples']:,} examples" in card.text
    # another split is not the card's: the card keeps the test scores
    before = card.text
    result = textgen([*args, "--split", "validation", "eval.max_examples=3"], cwd=workspace)
    assert result.returncode == 0, result.stderr
    assert card_of(stage).text == before
