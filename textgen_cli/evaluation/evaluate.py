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
import dataclasses
import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from textgen_cli.core.errors import UserError
from textgen_cli.core.files import write_text_atomic
from textgen_cli.core.loaded_recipe import settings_digest
from textgen_cli.core.progress import log
from textgen_cli.core.results import EvalReport
from textgen_cli.core.stages import STAGES
from textgen_cli.data.readers import EvalExample, examples_from, read_finetune_examples
from textgen_cli.metrics.registry import INTERVAL_ROWS, METRIC_NAMES, higher_is_better, module_rows
from textgen_cli.objectives import IGNORE_INDEX, encode_texts
from textgen_cli.training.validation import summed_nll


def metric_rows(results: dict[str, dict]) -> tuple[dict[str, float], dict[str, str]]:
    """One number per row (a shipped module's rows are its entries in metrics/registry.py; a user's
    module gives every number it returns), and the signature of each metric that has one."""
    rows: dict[str, float] = {}
    signatures: dict[str, str] = {}
    picks = {module: module_rows(module) for module in METRIC_NAMES}
    for entry, result in results.items():
        wanted = picks.get(entry) or {
            key: key if key == entry else f"{Path(entry).stem}.{key}"
            for key, value in result.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        for key, row in wanted.items():
            value = result.get(key)
            if isinstance(value, (int, float)):
                rows[row] = float(value)
                if "signature" in result:
                    signatures[row] = result["signature"]
    return rows, signatures


def score(
    names: Sequence[str], predictions: list[str], references: list[str], sources: list[str]
) -> tuple[dict[str, float], dict[str, str]]:
    from textgen_cli.metrics import compute_metrics

    return metric_rows(compute_metrics(list(names), predictions, references, sources))


def intervals(
    predictions: list[str], references: list[str], n_resamples: int, seed: int
) -> dict[str, dict[str, float]]:
    from textgen_cli.metrics import paired_bootstrap

    out = {}
    for row in INTERVAL_ROWS:  # an interval row's name is also its bootstrap metric's
        result = paired_bootstrap(row, predictions, None, references, n_resamples=n_resamples, seed=seed)
        out[row] = {"low": result["low"], "high": result["high"]}
    return out


def versus(
    predictions: list[str], baseline: list[str], references: list[str], n_resamples: int, seed: int
) -> dict[str, dict[str, Any]]:
    """Paired bootstrap of model minus baseline: is the model better, beyond resampling noise?"""
    from textgen_cli.metrics import paired_bootstrap

    out = {}
    for row in INTERVAL_ROWS:
        result = paired_bootstrap(row, predictions, baseline, references, n_resamples=n_resamples, seed=seed)
        out[row] = {
            "diff": result["diff"]["score"],
            "low": result["diff"]["low"],
            "high": result["diff"]["high"],
            "model_wins": result["a_wins"],
        }
    return out


def baseline_predictions(loaded, examples: list[EvalExample]) -> list[dict[str, Any]]:
    """The trivial systems a model must beat, each as {key, label, name, predictions}.

    Pairs: copy the source. Dialogue: retrieval (the response of the training example whose last
    user turn is nearest to this one, TF-IDF cosine; deterministic) and the most frequent training
    response."""
    recipe = loaded.recipe
    if recipe.data.finetune.task == "pairs":
        return [
            {
                "key": "copy_source",
                "label": "copy source",
                "name": "copy source",
                "predictions": [example.source for example in examples],
            }
        ]
    from textgen_cli.metrics.checks import NearestPrompt

    training = examples_from(
        read_finetune_examples(recipe.data.finetune, "train", recipe.data.max_examples), "dialogue"
    )
    counts = Counter(
        turn["content"]
        for dialogue in read_finetune_examples(recipe.data.finetune, "train", recipe.data.max_examples)
        for turn in dialogue.messages
        if turn["role"] == "assistant"
    )
    most_common = counts.most_common(1)[0][0]
    out = [
        {
            "key": "most_frequent",
            "label": "most frequent response",
            "name": f"most frequent training response ({most_common!r})",
            "predictions": [most_common] * len(examples),
        }
    ]
    if training:
        index = NearestPrompt([t.source for t in training])
        retrieved = [training[index.nearest(example.source)].reference for example in examples]
        out.append(
            {
                "key": "retrieval",
                "label": "retrieval",
                "name": "retrieval (response of the nearest training prompt, TF-IDF cosine)",
                "predictions": retrieved,
            }
        )
    return out


def score_baselines(
    loaded,
    examples: list[EvalExample],
    predictions: list[str],
    metric_names: Sequence[str],
    n_resamples: int,
    seed: int,
) -> list[dict[str, Any]]:
    """Every baseline scored like the model, with the paired bootstrap of model minus baseline."""
    references = [e.reference for e in examples]
    sources = [e.source for e in examples]
    scored = []
    for baseline in baseline_predictions(loaded, examples):
        metrics, _ = score(metric_names, baseline["predictions"], references, sources)
        scored.append(
            {
                "key": baseline["key"],
                "label": baseline["label"],
                "name": baseline["name"],
                "metrics": metrics,
                "versus": versus(predictions, baseline["predictions"], references, n_resamples, seed),
            }
        )
    return scored


def rotated(examples: list[EvalExample]) -> list[EvalExample]:
    """Every example with the next example's prompt (the last gets the first's): the references stay."""
    return [
        dataclasses.replace(
            example, prompt=examples[(i + 1) % len(examples)].prompt, source=examples[(i + 1) % len(examples)].source
        )
        for i, example in enumerate(examples)
    ]


def input_use(
    generator, examples: list[EvalExample], n: int, batch_size: int, n_resamples: int = 1000, seed: int = 1234
) -> tuple[dict[str, Any], dict[int, dict[str, float]]]:
    """Does the model read its input? The reference bits per byte of the first `n` examples with their
    own sources and with the sources rotated by one example (source[i] <- source[i+1]). A model that
    ignores its input scores both the same: the gap is ~0. Each reference is scored on its own under
    both sources, so the gap gets a bootstrap interval over the examples (the test-set noise).
    Returns the summary and, by example index, each scored reference's NLLs (nats) and bytes: they
    go to predictions.jsonl, so that runs can be compared on them later (seeds, budgets)."""
    subset = examples[:n]
    skipped = None
    if n <= 0 or len(subset) < 2:
        skipped = "eval.input_check is 0" if n <= 0 else "fewer than 2 examples"
    elif len({e.source for e in subset}) < 2:
        skipped = "every source is the same"
    own = per_example_nll(generator, subset, batch_size) if skipped is None else []
    other = per_example_nll(generator, rotated(subset), batch_size) if skipped is None else []
    kept = [i for i, (a, b) in enumerate(zip(own, other)) if a is not None and b is not None]
    if skipped is None and not kept:
        skipped = "no reference fits the context"
    if skipped is not None:
        return {
            "examples": len(subset),
            "skipped": skipped,
            "bits_per_byte_true": None,
            "bits_per_byte_shuffled": None,
            "gap": None,
        }, {}
    from textgen_cli.metrics import bits_per_byte, bits_per_byte_gap_interval, utf8_bytes

    nll_own, nll_other = [own[i] for i in kept], [other[i] for i in kept]
    n_bytes = [utf8_bytes(subset[i].reference) for i in kept]
    true, shuffled = bits_per_byte(sum(nll_own), sum(n_bytes)), bits_per_byte(sum(nll_other), sum(n_bytes))
    low, high = bits_per_byte_gap_interval(nll_own, nll_other, n_bytes, n_resamples, seed)
    per_example = {
        i: {"reference_nll": a, "reference_nll_shuffled": b, "reference_bytes": size}
        for i, a, b, size in zip(kept, nll_own, nll_other, n_bytes)
    }
    summary = {
        "examples": len(kept),
        "bits_per_byte_true": true,
        "bits_per_byte_shuffled": shuffled,
        "gap": shuffled - true,
        "gap_low": low,
        "gap_high": high,
        "method": "sources rotated by one example (source[i] <- source[i+1]), same references; "
        "95% percentile bootstrap over examples",
    }
    return summary, per_example


def per_example_nll(generator, examples: list[EvalExample], batch_size: int) -> list[float | None]:
    """Each reference's summed NLL (+ eos, nats) given its prompt, scored in batches as `likelihood`
    scores the set, and summed by row; None for a reference longer than the context."""
    import torch

    from textgen_cli.models import role_for
    from textgen_cli.objectives import row_loss_sums

    model = generator.model
    scored, pairs = scoring_pairs(generator, examples)
    dataset = role_for(generator.family).scoring_set(pairs, generator.tokenizer, model)
    sums: list[float] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            indices = list(range(start, min(len(dataset), start + batch_size)))
            batch = {k: v.to(model.device) for k, v in dataset.collate(indices, epoch=0).items()}
            sums.extend(row_loss_sums(model, batch, dataset.causal).tolist())
    model.train(was_training)
    nll = {id(example): value for example, value in zip(scored, sums)}
    return [nll.get(id(example)) for example in examples]


def scoring_pairs(generator, examples: list[EvalExample]) -> tuple[list[EvalExample], list[tuple]]:
    """The examples whose reference (+ eos) fits the context, and each one's (input, labels) pair for
    the family's scoring set: context tokens masked, a decoder-only prompt cut from the left."""
    from textgen_cli.generation.prompts import model_context
    from textgen_cli.models import role_for

    role = role_for(generator.family)
    context = model_context(generator.model)
    eos = generator.tokenizer.eos_token_id
    scored, pairs = [], []
    for example in examples:
        prompt = generator.prompt(example.prompt, where=f"example {example.id}").ids
        target = [*encode_texts(generator.tokenizer, [example.reference])[0], eos]
        if len(target) > context - 1:
            continue  # the reference alone does not fit: it cannot be scored whole, so it is left out
        scored.append(example)
        pairs.append(role.scoring_pair(prompt, target, context))
    return scored, pairs


def degeneration(sources: list[str], predictions: list[str], references: list[str]) -> dict[str, float]:
    """Distinct outputs per distinct source, and the repeated 4-gram rate of outputs and references."""
    from textgen_cli.metrics.checks import distinct_outputs_share, repeated_ngram_rate

    return {
        "distinct_outputs_share": distinct_outputs_share(sources, predictions),
        "distinct_sources": len(set(sources)),
        "distinct_outputs": len(set(predictions)),
        "repeated_4gram_rate": repeated_ngram_rate(predictions, 4),
        "reference_repeated_4gram_rate": repeated_ngram_rate(references, 4),
    }


def likelihood(generator, examples: list[EvalExample], batch_size: int) -> dict[str, float]:
    """NLL of each reference (+ eos) given its prompt, summed over tokens; bits per byte over the
    UTF-8 bytes of exactly the scored reference texts. Context tokens are masked, for both families.
    Every scored reference is scored whole: a reference longer than the context is left out
    (counted in `skipped_too_long`), and a decoder-only prompt loses its oldest tokens to make room."""
    from textgen_cli.metrics import bits_per_byte, perplexity
    from textgen_cli.models import role_for

    role = role_for(generator.family)
    tokenizer, model = generator.tokenizer, generator.model
    scored, pairs = scoring_pairs(generator, examples)
    if not scored:
        return {
            "examples": 0,
            "skipped_too_long": len(examples),
            "nll_sum": None,
            "tokens": 0,
            "bytes": 0,
            "nll_per_token": None,
            "perplexity": None,
            "bits_per_byte": None,
        }
    dataset = role.scoring_set(pairs, tokenizer, model)
    total, tokens = summed_nll(model, dataset, batch_size, model.device)
    n_bytes = sum(len(example.reference.encode("utf-8")) for example in scored)
    return {
        "examples": len(scored),
        "skipped_too_long": len(examples) - len(scored),
        "nll_sum": total,
        "tokens": tokens,
        "bytes": n_bytes,
        "nll_per_token": total / max(tokens, 1),
        "perplexity": perplexity(total, tokens),
        "bits_per_byte": bits_per_byte(total, n_bytes),
    }


def prose_skipped(setting: str, tokenizer) -> str | None:
    """Why held-out prose is not scored under `eval.prose` (None: it is). `auto` scores it for a model
    with textgen's own tokenizer only: pretrained by textgen on that text, and small. A model
    pretrained elsewhere did not learn from the recipe's prose, and in its long windows (8,192
    tokens for SmolLM2) the prose took most of an evaluation's time (issue 25: 578 s, of which 100 s
    of generation)."""
    from textgen_cli.data.tokenizer import is_textgen_tokenizer

    if setting == "off":
        return "eval.prose is off"
    if setting == "auto" and not is_textgen_tokenizer(tokenizer):
        return (
            "a model pretrained elsewhere (eval.prose=auto scores textgen's own models only; eval.prose=on scores it)"
        )
    return None


def prose_likelihood(generator, path: str | None, text_field: str, batch_size: int) -> dict[str, Any]:
    """Bits per byte of held-out prose (the recipe's pretraining validation text) for a decoder-only
    model, with a sliding window when the text is longer than the context: windows of the context
    length advance by half of it, and each token is scored once, with at least half a window of
    left context (except at the very start). Every document is followed by eos, which stands for
    the newline that separates documents in the byte count."""

    from textgen_cli.data.readers import read_texts
    from textgen_cli.generation.prompts import model_context
    from textgen_cli.metrics import bits_per_byte, perplexity
    from textgen_cli.models import role_for

    if not path:
        return {"skipped": "the recipe names no data.pretrain.validation text"}
    unscorable = role_for(generator.family).prose_unscorable()
    if unscorable:
        return {"skipped": unscorable}
    texts = read_texts(path, text_field)
    tokenizer, model = generator.tokenizer, generator.model
    stream = [t for ids in encode_texts(tokenizer, texts) for t in (*ids, tokenizer.eos_token_id)]
    window = model_context(model)
    stride = max(1, window // 2)
    rows, labels = [], []
    scored_until = 1  # the first token has no context to be predicted from
    for begin in range(0, max(1, len(stream) - 1), stride):
        end = min(begin + window, len(stream))
        ids = stream[begin:end]
        row_labels = [t if begin + i >= scored_until else IGNORE_INDEX for i, t in enumerate(ids)]
        rows.append(ids)
        labels.append(row_labels)
        scored_until = end
        if end == len(stream):
            break
    from textgen_cli.objectives import ChatExamples

    dataset = ChatExamples(list(zip(rows, labels)), pad_id=tokenizer.pad_token_id)
    total, tokens = summed_nll(model, dataset, batch_size, model.device)
    n_bytes = len("\n".join(texts).encode("utf-8"))
    return {
        "file": path,
        "documents": len(texts),
        "tokens": tokens,
        "bytes": n_bytes,
        "nll_sum": total,
        "perplexity": perplexity(total, tokens),
        "bits_per_byte": bits_per_byte(total, n_bytes),
        "window": window,
        "stride": stride,
    }


def perturbed_prompt(example: EvalExample, kind: str, rate: float, seed: int, index: int) -> str | list[dict[str, str]]:
    """Noise on the source (every non-assistant turn of a dialogue); the reference is untouched."""
    from textgen_cli.data.perturb import perturb, perturb_turns

    if isinstance(example.prompt, str):
        return perturb(example.prompt, kind, rate, seed + index)
    return perturb_turns(example.prompt, kind, rate, seed + index)


def eval_hash(loaded, stage: str | None, split: str) -> str:
    """What an evaluation depends on: the model's stage settings, the eval and decoding settings, the
    split file. `textgen compare` reuses an eval.json whose hash matches."""
    r = loaded.recipe
    return settings_digest(
        {
            "model": loaded.stage_hash(stage) if stage in STAGES else None,
            "eval": dataclasses.asdict(r.eval),
            "generate": dataclasses.asdict(r.generate),
            "split": getattr(r.data.finetune, split),
        }
    )


EVALS_DIR = "evals"


def output_dir(generator, explicit: str | None, split: str = "test", digest: str | None = None) -> Path:
    """Where an evaluation's files go. --output DIR: there. A textgen run's model: the stage's default
    evaluation, `<stage>/eval.json` beside the run files, is the first test-split evaluation made
    of the stage (normally the one right after training) and is only ever replaced by the same
    evaluation (same eval hash); any other evaluation (other settings, split or test file) gets its
    own `<stage>/evals/<eval hash>/`, so that no evaluation overwrites another."""
    if explicit:
        return Path(explicit)
    if generator.path.name != "final":
        raise UserError(
            f"--model {generator.path} is not a textgen run's final/ directory; give --output DIR for the evaluation files"
        )
    stage_dir = generator.path.parent
    if digest is None or (split == "test" and default_slot_open(stage_dir, digest)):
        return stage_dir
    return stage_dir / EVALS_DIR / digest


def default_slot_open(stage_dir: Path, digest: str) -> bool:
    """No default evaluation yet, or it is this very evaluation (same eval hash)."""
    existing = stage_dir / "eval.json"
    if not existing.is_file():
        return True
    try:
        return json.loads(existing.read_text(encoding="utf-8")).get("eval_hash") == digest
    except ValueError:
        return False  # unreadable: keep it for a person to look at, write elsewhere


def find_evaluation(stage_dir: Path, digest: str) -> Path | None:
    """The folder holding this stage's evaluation with this eval hash, if one was made."""
    for folder in (stage_dir, stage_dir / EVALS_DIR / digest):
        try:
            if (
                json.loads((folder / "eval.json").read_text(encoding="utf-8")).get("eval_hash") == digest
                and (folder / "predictions.jsonl").is_file()
            ):
                return folder
        except (OSError, ValueError):
            continue
    return None


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
    from textgen_cli.data.perturb import parse_spec
    from textgen_cli.generation.decoding import GenerationStats, settings_dict
    from textgen_cli.generation.generate import load_generator

    recipe = loaded.recipe
    section = recipe.eval
    if split not in ("train", "validation", "test"):
        raise UserError(f"--split {split}: expected train, validation or test")
    if not getattr(recipe.data.finetune, split):
        raise UserError(
            f"{loaded.path}: key 'data.finetune.{split}' is empty; nothing to evaluate on the {split} split"
        )
    specs = []
    for spec in [*section.perturb, *perturbations]:
        try:
            specs.append(parse_spec(spec))
        except ValueError as exc:
            raise UserError(f"--perturb: {exc}") from None
    from textgen_cli.metrics import resolve_metric_path

    for entry in section.metrics:  # an unknown metric must fail before minutes of generation
        resolve_metric_path(entry)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    with timed(timings, "load"):
        generator = (
            load_generator(None, model_dir, stage, loaded=loaded)
            if model_dir
            else load_generator(None, None, stage, loaded=loaded)
        )
    dialogues = read_finetune_examples(recipe.data.finetune, split, section.max_examples)
    examples = examples_from(dialogues, recipe.data.finetune.task)
    if not examples:
        raise UserError(
            f"{getattr(recipe.data.finetune, split)}: no example ends with an assistant turn that answers a user turn"
        )
    references = [e.reference for e in examples]
    sources = [e.source for e in examples]
    labels = [f"example {e.id}" for e in examples]

    def decode(prompts, what: str) -> tuple[list[str], GenerationStats]:
        stats = GenerationStats()
        on_batch = (lambda done, total, _: log(f"evaluate: {what}: {done}/{total} examples")) if progress else None
        results = generator.batch(prompts, stats=stats, on_batch=on_batch, labels=labels)
        return [r.output for r in results], stats

    with timed(timings, "generation"):
        predictions, stats = decode([e.prompt for e in examples], "generating")
    with timed(timings, "metrics"):
        metrics, signatures = score(section.metrics, predictions, references, sources)
        bounds = intervals(predictions, references, section.bootstrap, section.seed)
    with timed(timings, "baselines"):
        baselines = score_baselines(loaded, examples, predictions, section.metrics, section.bootstrap, section.seed)
    with timed(timings, "likelihood"):
        scored = likelihood(generator, examples, generator.settings.batch_size)
    with timed(timings, "input_use"):
        uses_input, reference_scores = input_use(
            generator, examples, section.input_check, generator.settings.batch_size, section.bootstrap, section.seed
        )
    with timed(timings, "prose"):
        # without a pretraining text, prose_likelihood says so itself
        skip = prose_skipped(section.prose, generator.tokenizer) if recipe.data.pretrain.validation else None
        prose = (
            {"skipped": skip}
            if skip
            else prose_likelihood(
                generator,
                recipe.data.pretrain.validation,
                recipe.data.pretrain.text_field,
                generator.settings.batch_size,
            )
        )

    robustness = []
    for kind, rate in specs:
        noisy_prompts = [perturbed_prompt(e, kind, rate, section.seed, i) for i, e in enumerate(examples)]
        with timed(timings, "robustness"):
            noisy_predictions, _ = decode(noisy_prompts, f"{kind}:{rate:g}")
        noisy, _ = score(section.metrics, noisy_predictions, references, sources)
        noisy_bounds = intervals(noisy_predictions, references, section.bootstrap, section.seed)
        robustness.append(
            {
                "perturbation": f"{kind}:{rate:g}",
                "kind": kind,
                "rate": rate,
                "metrics": noisy,
                "intervals": noisy_bounds,
                "drop": {row: metrics[row] - noisy[row] for row in noisy if row in metrics},
                "relative_drop": {
                    row: (metrics[row] - noisy[row]) / metrics[row] if metrics[row] else 0.0
                    for row in noisy
                    if row in metrics
                },
                "predictions": noisy_predictions,
                "prompts": noisy_prompts,
            }
        )

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
    from textgen_cli.evaluation.verdict import judge, thresholds_of

    report.verdict = judge(report.to_dict(), thresholds_of(section))
    folder = output_dir(generator, output, split, report.eval_hash)
    write_outputs(
        folder,
        "test" if folder.parent.name == EVALS_DIR else split,
        report,
        examples,
        predictions,
        robustness,
        reference_scores,
    )
    where = (
        "the stage's default evaluation"
        if not output and folder == generator.path.parent
        else ("a separate record; the stage's default evaluation is untouched" if not output else "--output")
    )
    log(f"evaluate: wrote {report.files['eval']} ({where})")
    return report


def write_outputs(
    folder: Path,
    split: str,
    report: EvalReport,
    examples: list[EvalExample],
    predictions: list[str],
    robustness: list[dict[str, Any]],
    reference_scores: dict[int, dict[str, float]] | None = None,
) -> None:
    """predictions.jsonl: one line per example, with the reference's NLL under its own and a shuffled
    source where the input-use check scored it; eval.json; the perturbed predictions."""
    suffix = "" if split == "test" else f"-{split}"
    folder.mkdir(parents=True, exist_ok=True)
    scores = reference_scores or {}
    lines = [
        json.dumps(
            {"id": e.id, "source": e.prompt, "reference": e.reference, "prediction": p, **scores.get(i, {})},
            ensure_ascii=False,
        )
        for i, (e, p) in enumerate(zip(examples, predictions))
    ]
    write_text_atomic(folder / f"predictions{suffix}.jsonl", "\n".join(lines) + "\n")
    for r in robustness:
        noisy = [
            json.dumps(
                {
                    "id": e.id,
                    "source": prompt,
                    "reference": e.reference,
                    "prediction": p,
                    "perturbation": r["perturbation"],
                },
                ensure_ascii=False,
            )
            for e, prompt, p in zip(examples, r["prompts"], r["predictions"])
        ]
        write_text_atomic(folder / f"predictions{suffix}-{r['kind']}-{r['rate']:g}.jsonl", "\n".join(noisy) + "\n")
    report.files = {
        "eval": str((folder / f"eval{suffix}.json").resolve()),
        "predictions": str((folder / f"predictions{suffix}.jsonl").resolve()),
    }
    write_text_atomic(folder / f"eval{suffix}.json", json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")


def diff_cell(row: str, diff: dict[str, Any] | None, value: float, base: float | None) -> str:
    """Model minus baseline: green when significantly better, red when significantly worse, `n.s.`
    inside the interval; without an interval the plain difference, marked untested."""
    better = higher_is_better(row) is not False
    if diff is not None:
        worse = (diff["high"] < 0) if better else (diff["low"] > 0)
        significant = diff["low"] > 0 or diff["high"] < 0
        style = "red" if worse else ("green" if significant else "")
        text = f"{diff['diff']:+.2f} [{diff['low']:+.2f}, {diff['high']:+.2f}]"
        return f"[{style}]{text}[/{style}]" if style else f"{text} n.s."
    if base is not None:
        return f"{value - base:+.4g} (untested)"
    return ""


def print_verdict(report: EvalReport, console) -> None:
    from rich.markup import escape

    from textgen_cli.evaluation.verdict import verdict_lines

    verdict = report.verdict
    if verdict is None:
        return
    lines = verdict_lines(f"verdict for {report.recipe_name} {report.stage or 'model'}", verdict)
    style = "green" if verdict["ok"] else "bold red"
    console.print(f"[{style}]{escape(lines[0])}[/{style}]", soft_wrap=True)
    for line in lines[1:]:
        console.print(escape(line), soft_wrap=True)


def print_table(report: EvalReport, stream=None) -> None:
    """The terminal view: the verdict, then the model against every baseline with intervals."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=stream, width=140)
    print_verdict(report, console)
    baselines = report.baselines or [{"label": report.baseline["name"], **report.baseline}]
    table = Table(
        title=f"{report.recipe_name} · {report.stage or 'model'} · {report.split} split · {report.n_examples} examples",
        caption="model - baseline: paired bootstrap 95% interval; green/red: significantly better/worse; n.s.: inside the interval; untested: no interval",
    )
    table.add_column("metric")
    table.add_column("model", justify="right")
    table.add_column("95% interval", justify="right")
    for baseline in baselines:
        table.add_column(baseline["label"][:30], justify="right")
        table.add_column(f"model - {baseline['label'][:22]} [95%]", justify="right")
    for row, value in report.metrics.items():
        bound = report.intervals.get(row)
        cells = [row, f"{value:.4g}", f"[{bound['low']:.4g}, {bound['high']:.4g}]" if bound else ""]
        for baseline in baselines:
            base = baseline["metrics"].get(row)
            cells += [
                f"{base:.4g}" if base is not None else "",
                diff_cell(row, baseline["versus"].get(row), value, base),
            ]
        table.add_row(*cells)
    blank = [""] * (2 * len(baselines))
    lik = report.likelihood
    if lik["bits_per_byte"] is not None:
        skipped = (
            f"{lik['skipped_too_long']} references longer than the context left out" if lik["skipped_too_long"] else ""
        )
        table.add_row("bits per byte", f"{lik['bits_per_byte']:.4f}", skipped, *blank)
        table.add_row("perplexity", f"{lik['perplexity']:.2f}", "", *blank)
    use = report.input_use or {}
    if use.get("gap") is not None:
        table.add_row(f"bits per byte, own sources ({use['examples']})", f"{use['bits_per_byte_true']:.4f}", "", *blank)
        table.add_row(
            f"bits per byte, shuffled sources ({use['examples']})", f"{use['bits_per_byte_shuffled']:.4f}", "", *blank
        )
        bound = f"[{use['gap_low']:+.4f}, {use['gap_high']:+.4f}]" if use.get("gap_low") is not None else ""
        table.add_row("input-use gap (shuffled - own)", f"{use['gap']:+.4f}", bound, *blank)
    degenerate = report.degeneration or {}
    if degenerate:
        table.add_row(
            "distinct outputs / distinct sources",
            f"{degenerate['distinct_outputs_share']:.3f}",
            f"{degenerate['distinct_outputs']} / {degenerate['distinct_sources']}",
            *blank,
        )
        table.add_row(
            "repeated 4-gram rate",
            f"{degenerate['repeated_4gram_rate']:.3f}",
            f"references {degenerate['reference_repeated_4gram_rate']:.3f}",
            *blank,
        )
    prose = report.prose
    if "bits_per_byte" in prose:
        table.add_row(
            "prose bits per byte",
            f"{prose['bits_per_byte']:.4f}",
            f"window {prose['window']}, stride {prose['stride']}",
            *blank,
        )
    console.print(table)
    for r in report.robustness:
        parts = ", ".join(
            f"{row} {report.metrics[row]:.4g} -> {r['metrics'][row]:.4g} ({-r['drop'][row]:+.4g}, {-100 * r['relative_drop'][row]:+.1f}%)"
            for row in ("bleu", "chrf", "rougeL")
            if row in r["metrics"]
        )
        console.print(f"robustness {r['perturbation']}: {parts}")
    gen = report.generation
    console.print(
        f"generated {gen['new_tokens']:,} tokens at {gen['tokens_per_s']:,.0f} tokens/s; evaluation took {report.eval_time_s:.1f} s "
        f"({report.examples_per_s:.1f} examples/s)"
    )
    console.print(
        f"evaluation written to {report.files['eval']} (predictions: {report.files['predictions']})", soft_wrap=True
    )
