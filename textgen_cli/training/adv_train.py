"""`textgen adv-train`: continue from the finetune output with L = L_clean + lambda * L_adv.

The adversarial objective (FGM, PGD, FreeLB, R3F; see adversarial.py) replaces the loop's clean step;
adversarial augmentation adds perturbed copies of training sources with their clean targets. Both
can be used alone or together.
"""

from __future__ import annotations

import random
from dataclasses import replace

from textgen_cli.core.progress import log
from textgen_cli.core.results import RunSummary
from textgen_cli.data.perturb import perturb_turns
from textgen_cli.data.readers import Dialogue
from textgen_cli.recipe import LoadedRecipe
from textgen_cli.training.adversarial import AdversarialStep, settings_from
from textgen_cli.training.finetune import build_examples, prepare, starting_point
from textgen_cli.training.run_dir import reset_peak_memory
from textgen_cli.training.step import clean_step
from textgen_cli.training.train import train_stage


def augment(dialogues: list[Dialogue], rate: float, kinds: list[str], strength: float, seed: int) -> list[Dialogue]:
    """Perturbed copies of round(rate * n) seeded-chosen dialogues: every non-assistant turn is
    noised (the source / context), every assistant turn (the target) stays clean. Kinds rotate."""
    count = int(round(rate * len(dialogues)))
    if count == 0 or not kinds:
        return []
    rng = random.Random(seed)
    chosen = (
        [rng.randrange(len(dialogues)) for _ in range(count)]
        if count > len(dialogues)
        else rng.sample(range(len(dialogues)), count)
    )
    copies = []
    for n, index in enumerate(chosen):
        kind = kinds[n % len(kinds)]
        source = dialogues[index]
        messages = perturb_turns(source.messages, kind, strength, seed + n)
        copies.append(Dialogue(id=f"{source.id}+{kind}", messages=messages))
    return copies


def run_adv_train(loaded: LoadedRecipe) -> RunSummary:
    reset_peak_memory()  # the stage's own peak, data preparation included
    recipe = loaded.recipe
    section = recipe.adv_train
    setup = prepare(loaded, starting_point(loaded, "adv-train"), "adv-train")
    extra_dialogues = augment(
        setup.train_dialogues,
        section.augment_rate,
        list(section.augment_kinds),
        section.augment_strength,
        recipe.train.seed,
    )
    if extra_dialogues:
        log(
            f"adv-train: {len(extra_dialogues)} perturbed copies added to {len(setup.train_dialogues)} training records"
        )
    setup = replace(setup, train_dialogues=setup.train_dialogues + extra_dialogues)
    train_set, val_set, truncated = build_examples(loaded, setup, "adv-train")
    settings = settings_from(section)
    step_fn = clean_step if settings.method == "none" else AdversarialStep(settings)
    if settings.method != "none":
        log(
            f"adv-train: {settings.method}, epsilon {settings.epsilon:g} ({settings.norm}), lambda {settings.weight:g}"
            + (
                f", {settings.ascent_steps} ascent steps of {settings.step_size:g}"
                if settings.method in ("pgd", "freelb")
                else ""
            )
        )
    extra = {
        "init_from": str(setup.start),
        "task": recipe.data.finetune.task,
        "truncated_examples": truncated,
        "adversarial": vars(settings),
        "augmented_examples": len(extra_dialogues),
        **setup.notes,
    }
    return train_stage(
        loaded,
        "adv-train",
        model=setup.model,
        tokenizer=setup.tokenizer,
        train_set=train_set,
        val_set=val_set,
        notes=extra,
        step_fn=step_fn,
    )
