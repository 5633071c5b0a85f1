"""`textgen evaluate`: generation-based and likelihood evaluation of a trained model, the same way
for both families.

For every example of the split: batched decoding with the recipe's `generate:` settings, then
metrics computed once over the whole corpus (local evaluate modules), paired bootstrap intervals,
a baseline in the same table, the likelihood of the reference (summed NLL, perplexity, bits per
byte of exactly the reference text, context masked), and, when asked, the same metrics on
perturbed sources (robustness).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from textgen_cli.data import Dialogue, read_finetune_examples
from textgen_cli.errors import UserError
from textgen_cli.objectives import IGNORE_INDEX, encode_texts
from textgen_cli.progress import log
from textgen_cli.runs import write_text_atomic
from textgen_cli.train import summed_nll

# Rows with bootstrap intervals, as (row name, bootstrap metric name).
INTERVAL_ROWS = {"bleu": "bleu", "chrf": "chrf", "rougeL": "rougeL"}
HIGHER_IS_BETTER = {"self_bleu": False, "perplexity": False, "bits_per_byte": False, "nll_per_token": False}


@dataclass
class EvalExample:
    id: str
    prompt: str | list[dict[str, str]]  # the source text (pairs) or the history ending with a user turn
    source: str  # what a reader sees as the input: the source, or the last user turn
    reference: str


def examples_from(dialogues: list[Dialogue], task: str) -> list[EvalExample]:
    """Pairs: source -> target. Dialogues: the history up to the last assistant turn -> that turn."""
    examples = []
    for dialogue in dialogues:
        last = max(i for i, turn in enumerate(dialogue.messages) if turn["role"] == "assistant")
        history = dialogue.messages[:last]
        if not history or history[-1]["role"] != "user":
            continue  # nothing to reply to
        reference = dialogue.messages[last]["content"]
        prompt = history[-1]["content"] if task == "pairs" else history
        examples.append(EvalExample(dialogue.id, prompt, history[-1]["content"], reference))
    return examples


def flatten(results: dict[str, dict]) -> tuple[dict[str, float], dict[str, str]]:
    """One number per table row, and the signature of each metric that has one."""
    rows: dict[str, float] = {}
    signatures: dict[str, str] = {}
    picks = {
        "bleu": {"score": "bleu"},
        "chrf": {"score": "chrf"},
        "rouge": {"rouge1": "rouge1", "rouge2": "rouge2", "rougeL": "rougeL", "rougeLsum": "rougeLsum"},
        "distinct": {"distinct_1": "distinct_1", "distinct_2": "distinct_2"},
        "self_bleu": {"self_bleu": "self_bleu"},
        "exact_match": {"exact_match": "exact_match"},
    }
    for entry, result in results.items():
        wanted = picks.get(entry) or {key: key if key == entry else f"{Path(entry).stem}.{key}" for key, value in result.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}
        for key, row in wanted.items():
            value = result.get(key)
            if isinstance(value, (int, float)):
                rows[row] = float(value)
                if "signature" in result:
                    signatures[row] = result["signature"]
    return rows, signatures


def score(names: Sequence[str], predictions: list[str], references: list[str], sources: list[str]) -> tuple[dict[str, float], dict[str, str]]:
    from textgen_cli.metrics import compute_metrics

    return flatten(compute_metrics(list(names), predictions, references, sources))


def intervals(predictions: list[str], references: list[str], n_resamples: int, seed: int) -> dict[str, dict[str, float]]:
    from textgen_cli.metrics import paired_bootstrap

    out = {}
    for row, metric in INTERVAL_ROWS.items():
        result = paired_bootstrap(metric, predictions, None, references, n_resamples=n_resamples, seed=seed)
        out[row] = {"low": result["low"], "high": result["high"]}
    return out


def versus(predictions: list[str], baseline: list[str], references: list[str], n_resamples: int, seed: int) -> dict[str, dict[str, Any]]:
    """Paired bootstrap of model minus baseline: is the model better, beyond resampling noise?"""
    from textgen_cli.metrics import paired_bootstrap

    out = {}
    for row, metric in INTERVAL_ROWS.items():
        result = paired_bootstrap(metric, predictions, baseline, references, n_resamples=n_resamples, seed=seed)
        out[row] = {"diff": result["diff"]["score"], "low": result["diff"]["low"], "high": result["diff"]["high"], "model_wins": result["a_wins"]}
    return out


def baseline_predictions(loaded, examples: list[EvalExample]) -> tuple[str, list[str]]:
    """Copy-the-source for pairs tasks; the most frequent training response for dialogue."""
    recipe = loaded.recipe
    if recipe.data.finetune.task == "pairs":
        return "copy source", [example.source for example in examples]
    counts = Counter(
        turn["content"]
        for dialogue in read_finetune_examples(recipe.data.finetune, "train", recipe.data.max_examples)
        for turn in dialogue.messages
        if turn["role"] == "assistant"
    )
    most_common = counts.most_common(1)[0][0]
    return f"most frequent training response ({most_common!r})", [most_common] * len(examples)


def likelihood(generator, examples: list[EvalExample], batch_size: int) -> dict[str, float]:
    """NLL of each reference (+ eos) given its prompt, summed over tokens; bits per byte over the
    UTF-8 bytes of exactly the scored reference texts. Context tokens are masked, for both families.
    Every scored reference is scored whole: a reference longer than the context is left out
    (counted in `skipped_too_long`), and a decoder-only prompt loses its oldest tokens to make room."""
    from textgen_cli.metrics import bits_per_byte, perplexity
    from textgen_cli.generate import model_context
    from textgen_cli.models import role_for

    role = role_for(generator.family)
    tokenizer, model = generator.tokenizer, generator.model
    context = model_context(model)
    eos = tokenizer.eos_token_id
    pairs, scored = [], []
    for example in examples:
        prompt = generator.prompt(example.prompt, where=f"example {example.id}").ids
        target = [*encode_texts(tokenizer, [example.reference])[0], eos]
        if len(target) > context - 1:
            continue  # the reference alone does not fit: it cannot be scored whole, so it is left out
        scored.append(example)
        pairs.append(role.scoring_pair(prompt, target, context))
    if not scored:
        return {"examples": 0, "skipped_too_long": len(examples), "nll_sum": None, "tokens": 0, "bytes": 0, "nll_per_token": None, "perplexity": None, "bits_per_byte": None}
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


def prose_likelihood(generator, path: str | None, text_field: str, batch_size: int) -> dict[str, Any]:
    """Bits per byte of held-out prose (the recipe's pretraining validation text) for a decoder-only
    model, with a sliding window when the text is longer than the context: windows of the context
    length advance by half of it, and each token is scored once, with at least half a window of
    left context (except at the very start). Every document is followed by eos, which stands for
    the newline that separates documents in the byte count."""

    from textgen_cli.data import read_texts
    from textgen_cli.generate import model_context
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
    from textgen_cli.perturb import perturb

    if isinstance(example.prompt, str):
        return perturb(example.prompt, kind, rate, seed + index)
    return [turn if turn["role"] == "assistant" else {**turn, "content": perturb(turn["content"], kind, rate, seed + index)} for turn in example.prompt]


def eval_hash(loaded, stage: str | None, split: str) -> str:
    """What an evaluation depends on: the model's stage settings, the eval and decoding settings, the
    split file. `textgen compare` reuses an eval.json whose hash matches."""
    r = loaded.recipe
    blob = json.dumps(
        {
            "model": loaded.stage_hash(stage) if stage in ("pretrain", "finetune", "adv-train") else None,
            "eval": dataclasses.asdict(r.eval),
            "generate": dataclasses.asdict(r.generate),
            "split": getattr(r.data.finetune, split),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def output_dir(generator, explicit: str | None) -> Path:
    """Beside the evaluated model's run files (runs/<name>/<stage>/), unless --output says otherwise."""
    if explicit:
        return Path(explicit)
    if generator.path.name == "final":
        return generator.path.parent
    raise UserError(f"--model {generator.path} is not a textgen run's final/ directory; give --output DIR for the evaluation files")


def run_evaluate(
    loaded,
    model_dir: str | None,
    stage: str | None,
    split: str,
    perturbations: Sequence[str],
    output: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    from textgen_cli.generate import GenerationStats, load_generator, settings_dict
    from textgen_cli.perturb import parse_spec

    recipe = loaded.recipe
    section = recipe.eval
    if split not in ("train", "validation", "test"):
        raise UserError(f"--split {split}: expected train, validation or test")
    if not getattr(recipe.data.finetune, split):
        raise UserError(f"{loaded.path}: key 'data.finetune.{split}' is empty; nothing to evaluate on the {split} split")
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
    generator = load_generator(None, model_dir, stage, loaded=loaded) if model_dir else load_generator(None, None, stage, loaded=loaded)
    dialogues = read_finetune_examples(recipe.data.finetune, split, section.max_examples)
    examples = examples_from(dialogues, recipe.data.finetune.task)
    if not examples:
        raise UserError(f"{getattr(recipe.data.finetune, split)}: no example ends with an assistant turn that answers a user turn")
    references = [e.reference for e in examples]
    sources = [e.source for e in examples]
    labels = [f"example {e.id}" for e in examples]

    def decode(prompts, what: str) -> tuple[list[str], GenerationStats]:
        stats = GenerationStats()
        on_batch = (lambda done, total, _: log(f"evaluate: {what}: {done}/{total} examples")) if progress else None
        results = generator.batch(prompts, stats=stats, on_batch=on_batch, labels=labels)
        return [r.output for r in results], stats

    predictions, stats = decode([e.prompt for e in examples], "generating")
    metrics, signatures = score(section.metrics, predictions, references, sources)
    bounds = intervals(predictions, references, section.bootstrap, section.seed)
    baseline_name, baseline = baseline_predictions(loaded, examples)
    baseline_metrics, _ = score(section.metrics, baseline, references, sources)
    versus_baseline = versus(predictions, baseline, references, section.bootstrap, section.seed)
    scored = likelihood(generator, examples, generator.settings.batch_size)
    prose = prose_likelihood(generator, recipe.data.pretrain.validation, recipe.data.pretrain.text_field, generator.settings.batch_size)

    robustness = []
    for kind, rate in specs:
        noisy_prompts = [perturbed_prompt(e, kind, rate, section.seed, i) for i, e in enumerate(examples)]
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
                "relative_drop": {row: (metrics[row] - noisy[row]) / metrics[row] if metrics[row] else 0.0 for row in noisy if row in metrics},
                "predictions": noisy_predictions,
                "prompts": noisy_prompts,
            }
        )

    elapsed = time.perf_counter() - started
    report = {
        "model": str(generator.path.resolve()),
        "stage": generator.stage,
        "family": generator.family,
        "recipe": str(loaded.path),
        "recipe_name": loaded.name,
        "settings_hash": loaded.settings_hash(),
        "eval_hash": eval_hash(loaded, generator.stage, split),
        "split": split,
        "n_examples": len(examples),
        "task": recipe.data.finetune.task,
        "decoding": settings_dict(generator.settings),
        "metrics": metrics,
        "intervals": bounds,
        "signatures": signatures,
        "bootstrap": {"resamples": section.bootstrap, "seed": section.seed, "confidence": 0.95, "method": "paired percentile bootstrap over examples"},
        "likelihood": scored,
        "prose": prose,
        "baseline": {"name": baseline_name, "metrics": baseline_metrics, "versus": versus_baseline},
        "robustness": [{k: v for k, v in r.items() if k not in ("predictions", "prompts")} for r in robustness],
        "generation": {"new_tokens": stats.new_tokens, "seconds": stats.seconds, "tokens_per_s": stats.tokens_per_s, "examples_per_s": len(examples) / max(stats.seconds, 1e-9)},
        "eval_time_s": elapsed,
        "examples_per_s": len(examples) / max(elapsed, 1e-9),
    }
    write_outputs(output_dir(generator, output), split, report, examples, predictions, robustness)
    return report


def write_outputs(folder: Path, split: str, report: dict[str, Any], examples: list[EvalExample], predictions: list[str], robustness: list[dict[str, Any]]) -> None:
    suffix = "" if split == "test" else f"-{split}"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"id": e.id, "source": e.prompt, "reference": e.reference, "prediction": p}, ensure_ascii=False)
        for e, p in zip(examples, predictions)
    ]
    write_text_atomic(folder / f"predictions{suffix}.jsonl", "\n".join(lines) + "\n")
    for r in robustness:
        noisy = [
            json.dumps({"id": e.id, "source": prompt, "reference": e.reference, "prediction": p, "perturbation": r["perturbation"]}, ensure_ascii=False)
            for e, prompt, p in zip(examples, r["prompts"], r["predictions"])
        ]
        write_text_atomic(folder / f"predictions{suffix}-{r['kind']}-{r['rate']:g}.jsonl", "\n".join(noisy) + "\n")
    report["files"] = {"eval": str((folder / f"eval{suffix}.json").resolve()), "predictions": str((folder / f"predictions{suffix}.jsonl").resolve())}
    write_text_atomic(folder / f"eval{suffix}.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def print_table(report: dict[str, Any], stream=None) -> None:
    """The terminal view: model vs baseline with intervals; a model that loses is marked."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=stream, width=120)
    table = Table(title=f"{report['recipe_name']} · {report['stage'] or 'model'} · {report['split']} split · {report['n_examples']} examples")
    table.add_column("metric")
    table.add_column("model", justify="right")
    table.add_column("95% interval", justify="right")
    table.add_column(report["baseline"]["name"][:40], justify="right")
    table.add_column("model - baseline [95%]", justify="right")
    versus_rows = report["baseline"]["versus"]
    for row, value in report["metrics"].items():
        bound = report["intervals"].get(row)
        base = report["baseline"]["metrics"].get(row)
        diff = versus_rows.get(row)
        better = HIGHER_IS_BETTER.get(row, True)
        if diff is not None:
            worse = (diff["high"] < 0) if better else (diff["low"] > 0)
            significant = diff["low"] > 0 or diff["high"] < 0
            style = "red" if worse else ("green" if significant else "")
            diff_text = f"[{style}]{diff['diff']:+.2f} [{diff['low']:+.2f}, {diff['high']:+.2f}][/{style}]" if style else f"{diff['diff']:+.2f} [{diff['low']:+.2f}, {diff['high']:+.2f}] n.s."
        elif base is not None:
            diff_text = f"{value - base:+.4g}"
        else:
            diff_text = ""
        table.add_row(row, f"{value:.4g}", f"[{bound['low']:.4g}, {bound['high']:.4g}]" if bound else "", f"{base:.4g}" if base is not None else "", diff_text)
    lik = report["likelihood"]
    if lik["bits_per_byte"] is not None:
        skipped = f" ({lik['skipped_too_long']} references longer than the context left out)" if lik["skipped_too_long"] else ""
        table.add_row("bits per byte", f"{lik['bits_per_byte']:.4f}", "", "", skipped)
        table.add_row("perplexity", f"{lik['perplexity']:.2f}", "", "", "")
    prose = report.get("prose", {})
    if "bits_per_byte" in prose:
        table.add_row("prose bits per byte", f"{prose['bits_per_byte']:.4f}", "", "", f"held-out prose, window {prose['window']}, stride {prose['stride']}")
    console.print(table)
    for r in report["robustness"]:
        parts = ", ".join(f"{row} {report['metrics'][row]:.4g} -> {r['metrics'][row]:.4g} ({-r['drop'][row]:+.4g}, {-100 * r['relative_drop'][row]:+.1f}%)" for row in ("bleu", "chrf", "rougeL") if row in r["metrics"])
        console.print(f"robustness {r['perturbation']}: {parts}")
    gen = report["generation"]
    console.print(
        f"generated {gen['new_tokens']:,} tokens at {gen['tokens_per_s']:,.0f} tokens/s; evaluation took {report['eval_time_s']:.1f} s "
        f"({report['examples_per_s']:.1f} examples/s); files: {report['files']['eval']}"
    )
