"""Likelihood rows: the reference's NLL, perplexity and bits per byte (context masked), the same
with the sources rotated across examples (does the model read its input?), and prose bits per byte."""

from __future__ import annotations

import dataclasses
from typing import Any

from textgen_cli.data.readers import EvalExample
from textgen_cli.objectives import IGNORE_INDEX, encode_texts
from textgen_cli.training.validation import summed_nll


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
    role = role_for(generator.family)
    scored, pairs = scoring_pairs(generator, examples)
    dataset = role.scoring_set(pairs, generator.tokenizer, model)
    sums: list[float] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            indices = list(range(start, min(len(dataset), start + batch_size)))
            batch = {k: v.to(model.device) for k, v in dataset.collate(indices, epoch=0).items()}
            sums.extend(row_loss_sums(model, batch, role.shifted_labels).tolist())
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
    total, tokens = summed_nll(model, dataset, batch_size, model.device, shifted=role.shifted_labels)
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
    role = role_for(generator.family)
    unscorable = role.prose_unscorable()
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
    total, tokens = summed_nll(model, dataset, batch_size, model.device, shifted=role.shifted_labels)
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
