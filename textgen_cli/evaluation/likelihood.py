"""Likelihood rows: the reference's NLL, perplexity and bits per byte (context masked), the same
after another example's prompt (does the model read its input?), and prose bits per byte."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from textgen_cli.data.readers import EvalExample
from textgen_cli.objectives import IGNORE_INDEX, encode_texts
from textgen_cli.training.validation import summed_nll


@dataclass
class ReferenceScores:
    """Each reference's summed NLL (+ eos, nats) after its own prompt, and, for the input-use check,
    after its partner's prompt (does the model read its input?).

    The check covers the first `check` examples; each one's partner is the next of them in the
    order decoding batches them (the longest prompts first; the last one's partner is the first).
    A decoder-only model scores both from the cache its decoding batch reads the prompts into
    (`on_prompts`): a reference then costs only its own tokens. What that leaves unscored (an
    encoder-decoder, a partner in another batch, a prompt and reference longer than the context
    together) `finish` scores in separate passes, with the prompt cut from the left to fit."""

    examples: list[EvalExample]
    targets: list[list[int] | None]  # each reference's ids and eos; None: longer than the context
    partners: dict[int, int]  # example -> the example whose prompt it is also scored after
    context: int
    own: dict[int, float] = field(default_factory=dict)
    shuffled: dict[int, float] = field(default_factory=dict)
    seconds_own: float = 0.0
    seconds_shuffled: float = 0.0

    @classmethod
    def of(cls, generator, examples: list[EvalExample], check: int) -> ReferenceScores:
        from textgen_cli.generation.decoding import decoding_batches
        from textgen_cli.generation.prompts import model_context

        context = model_context(generator.model)
        prompt_lengths = [len(generator.prompt(e.prompt, where=f"example {e.id}").ids) for e in examples]
        targets = reference_targets(generator.tokenizer, examples, context)
        batches = decoding_batches(prompt_lengths, generator.settings.batch_size)
        checked = [i for _, rows in batches for i in rows if i < check and targets[i] is not None]
        partners = {i: checked[(k + 1) % len(checked)] for k, i in enumerate(checked)} if len(checked) > 1 else {}
        return cls(examples, targets, partners, context)

    def on_prompts(self, rows: list[int], cached) -> None:
        """Score what this decoding batch's cache can: each reference after its own prompt, and
        after its partner's when the partner is in the batch."""
        import time

        lengths = cached.lengths
        row_of = {example: row for row, example in enumerate(rows)}
        began = time.perf_counter()
        own = [i for i in rows if self.fits(lengths[row_of[i]], i)]
        if own:
            self.own.update(zip(own, cached.nll([self.targets[i] for i in own], [row_of[i] for i in own])))
        middle = time.perf_counter()
        other = [i for i in rows if self.partners.get(i) in row_of and self.fits(lengths[row_of[self.partners[i]]], i)]
        if other:
            scored = cached.nll([self.targets[i] for i in other], [row_of[self.partners[i]] for i in other])
            self.shuffled.update(zip(other, scored))
        self.seconds_own += middle - began
        self.seconds_shuffled += time.perf_counter() - middle

    def fits(self, prompt_length: int, example: int) -> bool:
        target = self.targets[example]
        return target is not None and prompt_length + len(target) <= self.context

    def finish(self, generator, batch_size: int) -> None:
        """Score in separate passes what the decoding batches did not."""
        import time

        began = time.perf_counter()
        missing = [i for i, t in enumerate(self.targets) if t is not None and i not in self.own]
        self.own.update(zip(missing, per_example_nll(generator, [self.examples[i] for i in missing], batch_size)))
        middle = time.perf_counter()
        missing = [i for i in self.partners if i not in self.shuffled]
        swapped = [with_prompt_of(self.examples[i], self.examples[self.partners[i]]) for i in missing]
        self.shuffled.update(zip(missing, per_example_nll(generator, swapped, batch_size)))
        self.seconds_own += middle - began
        self.seconds_shuffled += time.perf_counter() - middle


def with_prompt_of(example: EvalExample, other: EvalExample) -> EvalExample:
    """The example with the other example's prompt (and source): its reference stays."""
    return dataclasses.replace(example, prompt=other.prompt, source=other.source)


def input_use(
    scores: ReferenceScores, check: int, n_resamples: int = 1000, seed: int = 1234
) -> tuple[dict[str, Any], dict[int, dict[str, float]]]:
    """Does the model read its input? The reference bits per byte of the first `check` examples
    after their own prompts and after their partners' (`ReferenceScores`). A model that ignores its
    input scores both the same: the gap is ~0. Each reference is scored on its own under both
    prompts, so the gap gets a bootstrap interval over the examples (the test-set noise).
    Returns the summary and, by example index, each scored reference's NLLs (nats) and bytes: they
    go to predictions.jsonl, so that runs can be compared on them later (seeds, budgets)."""
    from textgen_cli.metrics import bits_per_byte, bits_per_byte_gap_interval, utf8_bytes

    examples = scores.examples
    per_example = {
        i: {"reference_nll": nll, "reference_bytes": utf8_bytes(examples[i].reference)} for i, nll in scores.own.items()
    }
    subset = examples[:check]
    skipped = None
    if check <= 0 or len(subset) < 2:
        skipped = "eval.input_check is 0" if check <= 0 else "fewer than 2 examples"
    elif len({e.source for e in subset}) < 2:
        skipped = "every source is the same"
    kept = sorted(i for i in scores.partners if i in scores.own and i in scores.shuffled)
    if skipped is None and not kept:
        skipped = "no reference fits the context"
    if skipped is not None:
        summary = {"examples": len(subset), "skipped": skipped}
        return {**summary, "bits_per_byte_true": None, "bits_per_byte_shuffled": None, "gap": None}, per_example
    nll_own, nll_other = [scores.own[i] for i in kept], [scores.shuffled[i] for i in kept]
    n_bytes = [per_example[i]["reference_bytes"] for i in kept]
    for i, other in zip(kept, nll_other):
        per_example[i]["reference_nll_shuffled"] = other
    true, shuffled = bits_per_byte(sum(nll_own), sum(n_bytes)), bits_per_byte(sum(nll_other), sum(n_bytes))
    low, high = bits_per_byte_gap_interval(nll_own, nll_other, n_bytes, n_resamples, seed)
    summary = {
        "examples": len(kept),
        "bits_per_byte_true": true,
        "bits_per_byte_shuffled": shuffled,
        "gap": shuffled - true,
        "gap_low": low,
        "gap_high": high,
        "method": "each reference also scored after the prompt of the next checked example in decoding order "
        "(prompts longest first; same references); 95% percentile bootstrap over examples",
    }
    return summary, per_example


def per_example_nll(generator, examples: list[EvalExample], batch_size: int) -> list[float | None]:
    """Each reference's summed NLL (+ eos, nats) given its prompt, scored in batches of whole
    sequences (the prompt cut from the left to fit) and summed by row; None for a reference longer
    than the context."""
    import torch

    from textgen_cli.models import role_for
    from textgen_cli.objectives import row_loss_sums

    if not examples:
        return []
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
    scored, pairs = [], []
    for example, target in zip(examples, reference_targets(generator.tokenizer, examples, context)):
        if target is None:
            continue
        prompt = generator.prompt(example.prompt, where=f"example {example.id}").ids
        scored.append(example)
        pairs.append(role.scoring_pair(prompt, target, context))
    return scored, pairs


def reference_targets(tokenizer, examples: list[EvalExample], context: int) -> list[list[int] | None]:
    """Each reference's ids and eos, as they are scored; None for one longer than the context less
    one token: it cannot be scored whole, so it is left out (both ways of scoring agree on this)."""
    eos = tokenizer.eos_token_id
    references = encode_texts(tokenizer, [e.reference for e in examples])
    return [[*ids, eos] if len(ids) + 1 <= context - 1 else None for ids in references]


def likelihood(scores: ReferenceScores) -> dict[str, Any]:
    """NLL of each reference (+ eos) given its prompt, summed over tokens; bits per byte over the
    UTF-8 bytes of exactly the scored reference texts. Context tokens are masked, for both families.
    Every scored reference is scored whole: a reference longer than the context is left out
    (counted in `skipped_too_long`), and a decoder-only prompt loses its oldest tokens to make room."""
    from textgen_cli.metrics import bits_per_byte, perplexity, utf8_bytes

    scored = sorted(i for i, nll in scores.own.items() if nll is not None)
    if not scored:
        return {
            "examples": 0,
            "skipped_too_long": len(scores.examples),
            "nll_sum": None,
            "tokens": 0,
            "bytes": 0,
            "nll_per_token": None,
            "perplexity": None,
            "bits_per_byte": None,
        }
    total = sum(scores.own[i] for i in scored)
    tokens = sum(len(scores.targets[i]) for i in scored)  # type: ignore[arg-type]
    n_bytes = sum(utf8_bytes(scores.examples[i].reference) for i in scored)
    return {
        "examples": len(scored),
        "skipped_too_long": len(scores.examples) - len(scored),
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
