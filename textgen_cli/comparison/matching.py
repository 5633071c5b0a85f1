"""Each arm of a comparison trained (or its finished run reused) to a matched budget: steps from the
cost of one step in FLOPs, tokens or examples, so that no arm gets more compute than the others."""

from __future__ import annotations

import dataclasses
from typing import Any

from textgen_cli.core.errors import UserError
from textgen_cli.core.files import FINAL_DIR, SUMMARY_FILE
from textgen_cli.core.progress import log
from textgen_cli.core.results import RunSummary
from textgen_cli.core.stages import STAGES, section_of
from textgen_cli.models.flops import Lengths
from textgen_cli.recipe import LoadedRecipe, load_recipe
from textgen_cli.training import run_stage

# --------------------------------------------------------------------------------------------
# Training what is missing


def stage_done(loaded: LoadedRecipe, stage: str) -> bool:
    summary = loaded.run_dir(stage) / SUMMARY_FILE
    if not summary.is_file() or not (loaded.run_dir(stage) / FINAL_DIR).is_dir():
        return False
    try:
        return RunSummary.read(summary).stage_hash == loaded.stage_hash(stage)
    except UserError:  # unreadable: trained again
        return False


def with_overrides(loaded: LoadedRecipe, extra: list[str]) -> LoadedRecipe:
    return load_recipe(str(loaded.path), [*loaded.overrides, *extra])


def finetune_step_inputs(loaded: LoadedRecipe, stage: str) -> tuple[Lengths, Any]:
    """The lengths of one mean finetuning example (flops.Lengths, from the real tokenized data) and
    the model the stage starts from (random weights for `model.init_from: scratch`)."""
    from textgen_cli.models import role_of_model
    from textgen_cli.training.finetune import build_examples, prepare, starting_point

    start = starting_point(loaded) if stage == "finetune" else str(loaded.run_dir("finetune") / FINAL_DIR)
    setup = prepare(loaded, start, stage)
    train_set, _, _ = build_examples(loaded, setup, stage)
    n = min(len(train_set), 512)
    batch = train_set.collate(list(range(n)), 0)
    return role_of_model(setup.model).batch_lengths(batch).scaled(1 / n), setup.model


def step_cost(loaded: LoadedRecipe, stage: str, match: str) -> float:
    """FLOPs (or tokens) of one optimizer step of `stage`, from the recipe's model and data (the
    stages before it must be done: finetuning's tokens come from its starting model's tokenizer)."""
    from textgen_cli.models import role_for
    from textgen_cli.models.flops import flops_model, pretrain_tokens_per_sequence

    r = loaded.recipe
    sequences = r.train.batch_size * r.train.grad_accum
    if stage == "pretrain":
        enc, dec = pretrain_tokens_per_sequence(
            r.model.family, r.model.context, r.pretrain.mask_ratio, r.pretrain.poisson_lambda
        )
        example = Lengths.of_sequence(enc, dec)
        model = role_for(r.model.family).build(r.model, _FakeVocab(r.tokenizer.vocab_size))
    else:
        example, model = finetune_step_inputs(loaded, stage)
    if match == "flops":
        return flops_model(model).flops(example) * sequences
    return (example.encoder + example.decoder) * sequences


def match_budgets(entries: list[LoadedRecipe], stage: str, match: str) -> list[LoadedRecipe]:
    """Set `<stage>.steps` of every recipe so that its FLOPs (or tokens) equal the first recipe's."""
    from textgen_cli.models.flops import matched_steps

    per_step = [step_cost(loaded, stage, match) for loaded in entries]
    section = section_of(stage)
    budget = per_step[0] * getattr(entries[0].recipe, section).steps
    matched = [entries[0]]
    for loaded, cost in zip(entries[1:], per_step[1:]):
        steps = matched_steps(budget, cost)
        log(f"compare: --match {match}: {loaded.name} {stage} gets {steps} steps ({cost * steps:.3g} vs {budget:.3g})")
        matched.append(with_overrides(loaded, [f"{section}.steps={steps}"]))
    return matched


def last_stage_steps(budget: float, stages: list[tuple[str, float, int]], name: str = "") -> int:
    """Total-compute matching for a recipe whose stages differ from the first recipe's: every stage
    but the last keeps its own steps; the last gets what is left of the first recipe's whole
    budget. `stages`: (stage, cost per step, steps) in order; the last entry's steps are ignored."""
    from textgen_cli.models.flops import matched_steps

    spent = sum(cost * steps for _, cost, steps in stages[:-1])
    if spent >= budget:
        raise UserError(
            f"--match: recipe '{name}' spends {spent:.3g} in {', '.join(s for s, _, _ in stages[:-1])} before its last stage, "
            f"more than the first recipe's whole budget {budget:.3g}; lower those stages' steps"
        )
    return matched_steps(budget - spent, stages[-1][1])


class _FakeVocab:
    """Enough of a tokenizer for a builder to size a model before the real tokenizer exists."""

    def __init__(self, size: int):
        self.size = size
        self.pad_token_id, self.bos_token_id, self.eos_token_id = 0, 1, 2

    def __len__(self) -> int:
        return self.size


def train_or_reuse(loaded: LoadedRecipe, stage: str, reused: dict[tuple[str, str], bool]) -> None:
    if stage_done(loaded, stage):
        log(f"compare: reusing {loaded.run_dir(stage)} (same settings)")
        reused[(loaded.name, stage)] = True
    else:
        log(f"compare: training {loaded.name} {stage}")
        run_stage(loaded, stage)
        reused[(loaded.name, stage)] = False


def train_all(entries: list[LoadedRecipe], match: str | None) -> tuple[list[LoadedRecipe], dict[tuple[str, str], bool]]:
    """Run, stage by stage across recipes, every stage not already done with the same settings.

    With --match, recipes with the first recipe's stage list are matched stage by stage; a recipe
    whose stage list differs (e.g. `[finetune]` from scratch against `[pretrain, finetune]`) is
    matched on the TOTAL: its last stage gets the first recipe's whole budget minus what its own
    earlier stages spend."""
    reused: dict[tuple[str, str], bool] = {}
    first_stages = list(entries[0].recipe.stages)
    same = [i for i, loaded in enumerate(entries) if list(loaded.recipe.stages) == first_stages]
    differing = [i for i in range(len(entries)) if i not in same] if match else []
    staged = [i for i in range(len(entries)) if i not in differing]
    for stage in STAGES:
        having = [i for i in staged if stage in entries[i].recipe.stages]
        if not having:
            continue
        if match and len(having) > 1:
            matched = match_budgets([entries[i] for i in having], stage, match)
            for i, loaded in zip(having, matched):
                entries[i] = loaded
        for i in having:
            train_or_reuse(entries[i], stage, reused)
    if differing:
        first = entries[0]
        budget = sum(
            step_cost(first, stage, match) * getattr(first.recipe, section_of(stage)).steps for stage in first_stages
        )  # type: ignore[arg-type]
        for i in differing:
            entries[i] = train_to_total(entries[i], budget, match, first, reused)  # type: ignore[arg-type]
    return entries, reused


def train_to_total(
    loaded: LoadedRecipe, budget: float, match: str, first: LoadedRecipe, reused: dict[tuple[str, str], bool]
) -> LoadedRecipe:
    """Train `loaded` stage by stage; its last stage's steps match the first recipe's total budget."""
    stages = list(loaded.recipe.stages)
    plan: list[tuple[str, float, int]] = []
    for k, stage in enumerate(stages):
        section = section_of(stage)
        cost = step_cost(loaded, stage, match)  # its earlier stages are done by now
        if k == len(stages) - 1:
            steps = last_stage_steps(budget, [*plan, (stage, cost, 0)], loaded.name)
            spent = sum(c * n for _, c, n in plan) + cost * steps
            log(
                f"compare: --match {match}: {loaded.name} {stage} gets {steps} steps "
                f"(total {spent:.3g} vs {budget:.3g}: {first.name}'s {' + '.join(first.recipe.stages)})"
            )
            loaded = with_overrides(loaded, [f"{section}.steps={steps}"])
        plan.append((stage, cost, getattr(loaded.recipe, section).steps))
        train_or_reuse(loaded, stage, reused)
    return loaded


def common_settings(loaded: LoadedRecipe, reference: LoadedRecipe) -> LoadedRecipe:
    """`loaded` with the reference recipe's eval and generate sections: one way to measure."""
    recipe = dataclasses.replace(loaded.recipe, eval=reference.recipe.eval, generate=reference.recipe.generate)
    return LoadedRecipe(recipe=recipe, path=loaded.path, overrides=loaded.overrides)
