"""Learning regression: both families must learn a synthetic task that needs the input.

A falling loss proves little: a model that ignores its source can still lower its loss by learning
the targets' word statistics. Reversing a random word sequence can only be done by reading the
source, so these tests fail on any bug that lets a model train without using its input (a masking,
shifting, padding or batching mistake), which no loss-goes-down test catches. It caught one: with
length-grouped batches (every batch one length) the tiny encoder-decoder never learned to read its
source (see docs/training.md).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from harness import FAMILIES, recipe, save_recipe, textgen

pytestmark = pytest.mark.slow

WORDS = "red blue green black white gold iron salt wind fire rain snow stone tree bird fish".split()
STEPS = 400
# From scratch, after STEPS steps of 32 on this task, both families reach 0.45-0.47 nats per target
# token with the true sources and 2.67 with the sources rotated (a gap of 2.2). With length-grouped
# batches (train.group_by_length=true) they reach only 0.81 / 2.01 (`sora`) and 0.63 / 2.17
# (`chatgpt`), and at 300 steps a tiny `sora` stays near 1.35 / 1.62: learning to read the source is
# slower, and both bounds below fail on it. A model that ignores its source has a gap near 0.
MAX_LOSS = 0.6
MIN_GAP = 1.8
LEARNERS = (*FAMILIES, "prefix-lm")  # the prefix LM: chatgpt's model with its prompt read both ways
# The prefix LM learns this task more slowly: 0.60 / 2.47 (a gap of 1.86) at STEPS steps, where
# `chatgpt` reaches 0.45 / 2.67 with the same model and settings (2026-12-07). Its bounds are its own.
BOUNDS = {"prefix-lm": (0.7, 1.6)}


def reverse_recipe(family: str) -> dict:
    """Finetuning from scratch (2 layers, 64 wide), STEPS steps of 32 examples."""
    return recipe(
        family,
        stages=["finetune"],
        model={
            "init_from": "scratch",
            "layers": 2,
            "hidden": 64,
            "heads": 4,
            "ffn": 256,
            "context": 32,
            "dropout": 0.0,
        },
        tokenizer={"vocab_size": 300},
        data={"finetune": {"task": "pairs", "train": "train.jsonl", "validation": "validation.jsonl"}},
        train={
            "seed": 7,
            "device": "cpu",
            "batch_size": 32,
            "lr": 1.0e-3,
            "warmup_steps": 20,
            "log_every": 50,
            "eval_every": 100,
        },
        finetune={"steps": STEPS},
        eval={"after_finetune": False},
        generate={"max_new_tokens": 16},
    )


def words(rng: random.Random) -> list[str]:
    return [rng.choice(WORDS) for _ in range(rng.randint(3, 6))]


def write_reverse_task(folder: Path) -> None:
    """Source -> reversed-source pairs of random word sequences."""
    rng = random.Random(0)
    for name, n in (("train.jsonl", 2000), ("validation.jsonl", 128)):
        rows = []
        for _ in range(n):
            sequence = words(rng)
            rows.append(json.dumps({"source": " ".join(sequence), "target": " ".join(reversed(sequence))}) + "\n")
        (folder / name).write_text("".join(rows), encoding="utf-8")


def validation_losses(folder: Path, family: str) -> tuple[float, float]:
    """Validation loss per target token with the true sources, and with every source replaced by
    the next example's (the input-use check of docs/training.md)."""
    from textgen_cli.data.readers import Dialogue, read_finetune_examples
    from textgen_cli.data.tokenizer import load_tokenizer
    from textgen_cli.models import load_checkpoint, role_for
    from textgen_cli.objectives import TruncationCount
    from textgen_cli.recipe import load_recipe
    from textgen_cli.training.validation import summed_nll

    loaded = load_recipe(str(folder / f"{family}.yaml"), [f"run.root={folder / 'runs'}"])
    final = loaded.run_dir("finetune") / "final"
    tokenizer = load_tokenizer(final)
    model = load_checkpoint(final, family, len(tokenizer))
    dialogues = read_finetune_examples(loaded.recipe.data.finetune, "validation", None)
    rotated = [
        Dialogue(
            d.id,
            [{"role": "user", "content": dialogues[(i + 1) % len(dialogues)].messages[0]["content"]}, d.messages[1]],
        )
        for i, d in enumerate(dialogues)
    ]
    losses = []
    for split in (dialogues, rotated):
        examples = role_for(family).finetune_examples(
            split, tokenizer, loaded, model.config.max_position_embeddings, TruncationCount()
        )
        total, n_tokens = summed_nll(model, examples, 64, "cpu", shifted=role_for(family).shifted_labels)
        losses.append(total / n_tokens)
    return losses[0], losses[1]


@pytest.fixture(scope="module")
def reverse_task(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("reverse")
    write_reverse_task(folder)
    for family in LEARNERS:
        save_recipe(folder / f"{family}.yaml", reverse_recipe(family))
    return folder


@pytest.mark.parametrize("family", LEARNERS)
def test_learns_a_task_that_needs_its_input(reverse_task, family):
    result = textgen(["finetune", "--recipe", f"{family}.yaml"], cwd=reverse_task)
    assert result.returncode == 0, result.stderr[-3000:]
    true_loss, rotated_loss = validation_losses(reverse_task, family)
    max_loss, min_gap = BOUNDS.get(family, (MAX_LOSS, MIN_GAP))
    assert true_loss < max_loss, f"{family} did not learn to reverse its source: validation loss {true_loss:.3f}"
    assert rotated_loss - true_loss > min_gap, (
        f"{family} ignores its source: loss {true_loss:.3f} with the true sources, {rotated_loss:.3f} with rotated ones"
    )
