"""`textgen evaluate`: generation-based and likelihood evaluation of a trained model, the same way
for both families.

For every example of the split: batched decoding with the recipe's `generate:` settings, then
metrics computed once over the whole corpus (local evaluate modules), paired bootstrap intervals,
a baseline in the same table, the likelihood of the reference (summed NLL, perplexity, bits per
byte of exactly the reference text, context masked), and, when asked, the same metrics on
perturbed sources (robustness).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

from textgen_cli.core.errors import UserError
from textgen_cli.core.progress import log
from textgen_cli.core.results import EvalReport
from textgen_cli.data.readers import EvalExample, examples_from, read_finetune_examples
from textgen_cli.evaluation.eval_files import (
    EVALS_DIR,
    eval_hash,
    output_dir,
    write_outputs,
)
from textgen_cli.evaluation.likelihood import (
    ReferenceScores,
    input_use,
    likelihood,
    prose_likelihood,
    prose_skipped,
)
from textgen_cli.evaluation.scores import (
    degeneration,
    intervals,
    score,
    score_baselines,
)


def perturbed_prompt(example: EvalExample, kind: str, rate: float, seed: int, index: int) -> str | list[dict[str, str]]:
    """Noise on the source (every non-assistant turn of a dialogue); the reference is untouched."""
    from textgen_cli.data.perturb import perturb, perturb_turns

    if isinstance(example.prompt, str):
        return perturb(example.prompt, kind, rate, seed + index)
    return perturb_turns(example.prompt, kind, rate, seed + index)


@contextlib.contextmanager
def timed(timings: dict[str, float], part: str) -> Iterator[None]:
    """Adds the seconds of the block to timings[part] (eval.json's `timings`: where the time went)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[part] = timings.get(part, 0.0) + time.perf_counter() - started


def run_evaluate(
    loaded,
    model_dir: str | None,
    stage: str | None,
    split: str,
    perturbations: Sequence[str],
    output: str | None = None,
    progress: bool = True,
) -> EvalReport:
    """Score the recipe's trained model (or `model_dir`) on `split`: generation, metrics with
    intervals, baselines, likelihood, input use, prose, robustness; written beside the model (or to
    `output`) and returned."""
    from textgen_cli.evaluation.verdict import judge, thresholds_of
    from textgen_cli.generation.decoding import GenerationStats, settings_dict
    from textgen_cli.generation.generate import load_generator

    recipe, section = loaded.recipe, loaded.recipe.eval
    specs = checked_request(loaded, split, perturbations)  # before minutes of generation
    started = time.perf_counter()
    timings: dict[str, float] = {}
    with timed(timings, "load"):
        generator = load_generator(None, model_dir or None, stage, loaded=loaded)
    examples = split_examples(loaded, split)
    references = [e.reference for e in examples]
    sources = [e.source for e in examples]
    labels = [f"example {e.id}" for e in examples]

    def decode(prompts, what: str, on_prompts=None) -> tuple[list[str], GenerationStats]:
        stats = GenerationStats()
        on_batch = (lambda done, total, _: log(f"evaluate: {what}: {done}/{total} examples")) if progress else None
        results = generator.batch(prompts, stats=stats, on_batch=on_batch, labels=labels, on_prompts=on_prompts)
        return [r.output for r in results], stats

    # the references are scored from the prompts decoding reads (where the family allows), so that
    # the likelihood and the input-use check do not read every prompt again
    reference_nlls = ReferenceScores.of(generator, examples, section.input_check)
    with timed(timings, "generation"):
        predictions, stats = decode([e.prompt for e in examples], "generating", reference_nlls.on_prompts)
    timings["generation"] -= reference_nlls.seconds_own + reference_nlls.seconds_shuffled  # scored in its batches
    reference_nlls.finish(generator, generator.settings.batch_size)
    timings["likelihood"] = reference_nlls.seconds_own
    timings["input_use"] = reference_nlls.seconds_shuffled
    with timed(timings, "metrics"):
        metrics, signatures = score(section.metrics, predictions, references, sources)
        bounds = intervals(predictions, references, section.bootstrap, section.seed)
    with timed(timings, "baselines"):
        baselines = score_baselines(loaded, examples, predictions, section.metrics, section.bootstrap, section.seed)
    with timed(timings, "likelihood"):
        scored = likelihood(reference_nlls)
    with timed(timings, "input_use"):
        uses_input, reference_scores = input_use(reference_nlls, section.input_check, section.bootstrap, section.seed)
    with timed(timings, "prose"):
        prose = prose_row(generator, recipe)
    robustness = [perturbed_scores(decode, examples, kind, rate, metrics, section, timings) for kind, rate in specs]
    elapsed = time.perf_counter() - started
    report = EvalReport(
        model=str(generator.path.resolve()),
        stage=generator.stage,
        family=generator.family,
        recipe=str(loaded.path),
        recipe_name=loaded.name,
        settings_hash=loaded.settings_hash(),
        eval_hash=eval_hash(loaded, generator.stage, split),
        split=split,
        n_examples=len(examples),
        task=recipe.data.finetune.task,
        decoding=settings_dict(generator.settings),
        metrics=metrics,
        intervals=bounds,
        signatures=signatures,
        bootstrap={
            "resamples": section.bootstrap,
            "seed": section.seed,
            "confidence": 0.95,
            "method": "paired percentile bootstrap over examples",
        },
        likelihood=scored,
        prose=prose,
        baseline={
            key: baselines[0][key] for key in ("name", "metrics", "versus")
        },  # the first baseline (compatibility)
        baselines=baselines,
        input_use=uses_input,
        degeneration=degeneration(sources, predictions, references),
        robustness=[{k: v for k, v in r.items() if k not in ("predictions", "prompts")} for r in robustness],
        generation={
            "new_tokens": stats.new_tokens,
            "seconds": stats.seconds,
            "tokens_per_s": stats.tokens_per_s,
            "examples_per_s": len(examples) / max(stats.seconds, 1e-9),
        },
        eval_time_s=elapsed,
        examples_per_s=len(examples) / max(elapsed, 1e-9),
        timings=timings,
    )
    report.verdict = judge(report.to_dict(), thresholds_of(section))
    folder = output_dir(generator, output, split, report.eval_hash)
    split_name = "test" if folder.parent.name == EVALS_DIR else split
    write_outputs(folder, split_name, report, examples, predictions, robustness, reference_scores)
    where = (
        "the stage's default evaluation"
        if not output and folder == generator.path.parent
        else ("a separate record; the stage's default evaluation is untouched" if not output else "--output")
    )
    log(f"evaluate: wrote {report.files['eval']} ({where})")
    return report


def checked_request(loaded, split: str, perturbations: Sequence[str]) -> list[tuple[str, float]]:
    """The split, the perturbations (the recipe's and --perturb's, parsed) and the metric names,
    checked before anything loads."""
    from textgen_cli.data.perturb import parse_spec
    from textgen_cli.metrics import resolve_metric_path

    recipe = loaded.recipe
    if split not in ("train", "validation", "test"):
        raise UserError(f"--split {split}: expected train, validation or test")
    if not getattr(recipe.data.finetune, split):
        raise UserError(
            f"{loaded.path}: key 'data.finetune.{split}' is empty; nothing to evaluate on the {split} split"
        )
    specs = []
    for spec in [*recipe.eval.perturb, *perturbations]:
        try:
            specs.append(parse_spec(spec))
        except ValueError as exc:
            raise UserError(f"--perturb: {exc}") from None
    for entry in recipe.eval.metrics:  # an unknown metric must fail before minutes of generation
        resolve_metric_path(entry)
    return specs


def split_examples(loaded, split: str) -> list[EvalExample]:
    recipe = loaded.recipe
    dialogues = read_finetune_examples(recipe.data.finetune, split, recipe.eval.max_examples)
    examples = examples_from(dialogues, recipe.data.finetune.task)
    if not examples:
        raise UserError(
            f"{getattr(recipe.data.finetune, split)}: no example ends with an assistant turn that answers a user turn"
        )
    return examples


def prose_row(generator, recipe) -> dict[str, Any]:
    """Bits per byte of the pretraining validation text, or why it was skipped (eval.prose); without
    a pretraining text, prose_likelihood says so itself."""
    skip = prose_skipped(recipe.eval.prose, generator.tokenizer) if recipe.data.pretrain.validation else None
    if skip:
        return {"skipped": skip}
    return prose_likelihood(
        generator, recipe.data.pretrain.validation, recipe.data.pretrain.text_field, generator.settings.batch_size
    )


def perturbed_scores(
    decode, examples: list[EvalExample], kind: str, rate: float, metrics: dict[str, float], section, timings
) -> dict[str, Any]:
    """The metrics again on perturbed sources (eval.perturb, --perturb), and the drop from the clean ones."""
    references = [e.reference for e in examples]
    sources = [e.source for e in examples]
    noisy_prompts = [perturbed_prompt(e, kind, rate, section.seed, i) for i, e in enumerate(examples)]
    with timed(timings, "robustness"):
        noisy_predictions, _ = decode(noisy_prompts, f"{kind}:{rate:g}")
    noisy, _ = score(section.metrics, noisy_predictions, references, sources)
    return {
        "perturbation": f"{kind}:{rate:g}",
        "kind": kind,
        "rate": rate,
        "metrics": noisy,
        "intervals": intervals(noisy_predictions, references, section.bootstrap, section.seed),
        "drop": {row: metrics[row] - noisy[row] for row in noisy if row in metrics},
        "relative_drop": {
            row: (metrics[row] - noisy[row]) / metrics[row] if metrics[row] else 0.0 for row in noisy if row in metrics
        },
        "predictions": noisy_predictions,
        "prompts": noisy_prompts,
    }
