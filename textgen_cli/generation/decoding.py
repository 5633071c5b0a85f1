"""Decoding: one `model.generate` call per batch of prompts, streaming, and what each call produced.

`generate_batch` decodes many prompts (sorted by length into batches, results in input order);
`generate_stream` decodes one, handing its text over as it grows. Both take every decoding choice
from the recipe's `generate:` section (`generation_config`), never from the checkpoint, and print
nothing: the CLI, chat sessions and `evaluate` decide what to show.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from textgen_cli.core.schema import GenerateSection
from textgen_cli.generation.prompts import Prompt, PromptInput, build_prompt, prompt_budget, prompt_format
from textgen_cli.models import Role, role_of_model

if TYPE_CHECKING:
    from textgen_cli.generation.continuations import CachedPrompts


@dataclass
class GenerationResult:
    output: str
    output_ids: list[int]  # generated ids, eos included when the model stopped there
    prompt_tokens: int
    new_tokens: int
    finish_reason: str  # `eos`, `stop` (a stop string) or `length` (max_new_tokens)
    truncated: bool = False
    dropped_turns: int = 0


@dataclass
class GenerationStats:
    """Filled in by the decoding functions: what the summary line shows."""

    prompts: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    first_token_s: float | None = None  # of the first call (a batch, or a reply)
    first_token_total_s: float = 0.0
    first_token_count: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def add(self, other: GenerationStats) -> None:
        self.prompts += other.prompts
        self.new_tokens += other.new_tokens
        self.seconds += other.seconds
        if other.first_token_s is not None:
            if self.first_token_s is None:
                self.first_token_s = other.first_token_s
            self.first_token_total_s += other.first_token_s
            self.first_token_count += 1

    def line(self, mean_first_token: bool = False) -> str:
        if mean_first_token and self.first_token_count:
            ttft = f"mean time to first token {self.first_token_total_s / self.first_token_count * 1000:,.0f} ms"
        elif self.first_token_s is not None:
            ttft = f"time to first token {self.first_token_s * 1000:,.0f} ms"
        else:
            ttft = "time to first token n/a (beam search)"
        prompts = f" for {self.prompts} prompts" if self.prompts != 1 else ""
        return f"generated {self.new_tokens:,} tokens{prompts} in {self.seconds:.2f} s: {self.tokens_per_s:,.1f} tokens/s, {ttft}"


def generation_config(model, tokenizer, settings: GenerateSection):
    """A GenerationConfig holding every decoding choice, nothing inherited from the checkpoint."""
    from transformers import GenerationConfig

    values: dict[str, Any] = {
        "max_new_tokens": settings.max_new_tokens,
        "min_new_tokens": settings.min_new_tokens or None,
        "do_sample": settings.do_sample,
        "num_beams": settings.num_beams,
        "repetition_penalty": settings.repetition_penalty,
        "no_repeat_ngram_size": settings.no_repeat_ngram_size,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "use_cache": True,
    }
    if settings.do_sample:
        values.update(temperature=settings.temperature, top_k=settings.top_k or None, top_p=settings.top_p)
    if settings.num_beams > 1:
        values.update(length_penalty=settings.length_penalty)
    if settings.stop:
        values["stop_strings"] = list(settings.stop)
    values.update(role_of_model(model).generation_extras(model, tokenizer))
    return GenerationConfig(**values)


class _FirstToken:
    """A streamer that only notes when the first new token arrives (works at any batch size)."""

    def __init__(self, on_text: Callable[[str], None] | None = None, tokenizer=None, stop: Sequence[str] = ()):
        self.puts = 0
        self.first_at: float | None = None
        self.printer = _StopAwarePrinter(tokenizer, on_text, stop) if on_text is not None else None

    def put(self, value) -> None:
        self.puts += 1
        if self.puts == 2 and self.first_at is None:  # the first put is the prompt (or decoder start)
            self.first_at = time.perf_counter()
        if self.printer is not None and self.puts > 1:
            self.printer.add(value.reshape(-1).tolist())

    def end(self) -> None:
        if self.printer is not None:
            self.printer.finish()


class _StopAwarePrinter:
    """Streams decoded text as it grows, never showing a stop string or what follows it."""

    def __init__(self, tokenizer, write: Callable[[str], None], stop: Sequence[str]):
        self.tokenizer = tokenizer
        self.write = write
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.shown = 0
        self.stopped = False

    def add(self, ids: list[int]) -> None:
        self.ids.extend(ids)
        self._emit(final=False)

    def finish(self) -> None:
        self._emit(final=True)

    def _emit(self, final: bool) -> None:
        if self.stopped:
            return
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = cut_at_stop(text, self.stop)
        if cut is not None:
            text, self.stopped = text[:cut], True
        elif not final:
            if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its other bytes
                return
            hold = max((len(s) - 1 for s in self.stop), default=0)  # could be the start of a stop string
            text = text[: len(text) - hold] if hold else text
        if len(text) > self.shown:
            self.write(text[self.shown :])
            self.shown = len(text)


def cut_at_stop(text: str, stop: Sequence[str]) -> int | None:
    positions = [text.find(s) for s in stop if s and s in text]
    return min(positions) if positions else None


def _decode_batch(
    model,
    tokenizer,
    prompts: Sequence[list[int]],
    settings: GenerateSection,
    streamer=None,
    on_prompts: Callable[[CachedPrompts], None] | None = None,
) -> list[tuple[list[int], str, str]]:
    """One `model.generate` call over a batch: (new ids, text, finish reason) per prompt.
    `on_prompts` gets the batch's prompts read into a cache before decoding goes on from it (greedy
    or sampled decoding of a role that decodes from such a cache; otherwise it is not called)."""
    import torch

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    role = role_of_model(model)
    for row, ids in enumerate(prompts):
        # decoder-only: left padding, so that every row's next token comes right after its prompt
        span = slice(width - len(ids), width) if role.left_padding else slice(0, len(ids))
        input_ids[row, span] = torch.as_tensor(ids, dtype=torch.long)
        attention_mask[row, span] = 1
    config = generation_config(model, tokenizer, settings)
    kwargs: dict[str, Any] = {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "generation_config": config,
    }
    if settings.stop:
        kwargs["tokenizer"] = tokenizer
    if streamer is not None:
        kwargs["streamer"] = streamer
    cache = None
    if on_prompts is not None and config.num_beams == 1:
        cache = role.prompt_cache(model, kwargs["input_ids"], kwargs["attention_mask"])
    if cache is not None:
        from textgen_cli.generation.continuations import CachedPrompts
        from textgen_cli.models.decoder_only import cache_argument

        on_prompts(CachedPrompts(model, cache, kwargs["input_ids"], kwargs["attention_mask"]))
        kwargs[cache_argument(model)] = cache
    else:
        kwargs.update(role.decoding_inputs(model, kwargs["input_ids"], kwargs["attention_mask"], config.num_beams))
    saved = model.generation_config
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig()  # nothing from the checkpoint's defaults leaks in
    try:
        with torch.inference_mode():
            sequences = model.generate(**kwargs)
    finally:
        model.generation_config = saved
    new = role.new_tokens(sequences, width)
    results = []
    eos = tokenizer.eos_token_id
    for row in new.tolist():
        if eos in row:
            ids, reason = row[: row.index(eos) + 1], "eos"
        else:
            ids = list(row)
            while ids and ids[-1] == pad:
                ids.pop()
            reason = "length"
        text = tokenizer.decode([i for i in ids if i != eos], skip_special_tokens=True)
        cut = cut_at_stop(text, settings.stop)
        if cut is not None:
            text, reason = text[:cut], "stop"
        results.append((ids, text, reason))
    return results


def generate_batch(
    model,
    tokenizer,
    inputs: Sequence[PromptInput],
    settings: GenerateSection,
    family: str | Role,
    task: str = "pairs",
    batch_size: int | None = None,
    *,
    system: str = "",
    fmt: str | None = None,
    stats: GenerationStats | None = None,
    on_batch: Callable[[int, int, GenerationStats], None] | None = None,
    labels: Sequence[str] | None = None,
    on_prompts: Callable[[list[int], CachedPrompts], None] | None = None,
) -> list[GenerationResult]:
    """Batched decoding: one result per input, in input order; prints nothing.

    `inputs` are plain prompts or dialogues (lists of {role, content} turns ending with a user turn).
    `fmt` defaults to what a finetuned model of `family` on `task` was trained with. Prompts are sorted
    by length into batches of `batch_size` (default `settings.batch_size`) to waste little on padding.
    Greedy results do not depend on the batch size. `on_batch(done, total, batch_stats)` reports progress;
    `labels` name the inputs in error messages (default: "input N"). `on_prompts(inputs, cached)`
    gets each batch's input indices and their prompts read into the cache that decoding goes on
    from (see `_decode_batch`); its time is not counted as decoding time.
    """
    import torch

    fmt = fmt or prompt_format(family, task)
    budget = prompt_budget(model, settings)
    prompts = [
        build_prompt(
            tokenizer,
            item,
            family,
            fmt,
            budget,
            system,
            settings.too_long,
            where=labels[index] if labels else f"input {index + 1}",
        )
        for index, item in enumerate(inputs)
    ]
    size = batch_size or settings.batch_size
    results: list[GenerationResult | None] = [None] * len(prompts)
    torch.manual_seed(settings.seed)
    total = stats if stats is not None else GenerationStats()
    for start, chosen in decoding_batches([len(p.ids) for p in prompts], size):
        timer = _FirstToken() if settings.num_beams == 1 else None
        aside = [0.0]  # seconds spent in on_prompts

        def handed(cached: CachedPrompts, chosen: list[int] = chosen, aside: list[float] = aside) -> None:
            began = time.perf_counter()
            on_prompts(chosen, cached)  # type: ignore[misc]
            aside[0] += time.perf_counter() - began

        began = time.perf_counter()
        decoded = _decode_batch(
            model,
            tokenizer,
            [prompts[i].ids for i in chosen],
            settings,
            streamer=timer,
            on_prompts=handed if on_prompts is not None else None,
        )
        elapsed = time.perf_counter() - began - aside[0]
        batch = GenerationStats(prompts=len(chosen), seconds=elapsed)
        if timer is not None and timer.first_at is not None:
            batch.first_token_s = timer.first_at - began
        for index, (ids, text, reason) in zip(chosen, decoded):
            prompt = prompts[index]
            results[index] = GenerationResult(
                text, ids, len(prompt.ids), len(ids), reason, prompt.truncated, prompt.dropped_turns
            )
            batch.new_tokens += len(ids)
        total.add(batch)
        if on_batch is not None:
            on_batch(start + len(chosen), len(prompts), batch)
    return results  # type: ignore[return-value]


def decoding_batches(prompt_lengths: Sequence[int], size: int) -> list[tuple[int, list[int]]]:
    """The batches `generate_batch` decodes, as (inputs before it, input indices): the longest
    prompts first, so that a batch wastes little on padding."""
    order = sorted(range(len(prompt_lengths)), key=lambda i: -prompt_lengths[i])
    return [(start, order[start : start + size]) for start in range(0, len(order), size)]


def generate_stream(
    model,
    tokenizer,
    prompt: Prompt,
    settings: GenerateSection,
    write: Callable[[str], None],
    stats: GenerationStats | None = None,
) -> GenerationResult:
    """Decode one prompt, handing text to `write` as it is produced (all at once for beam search)."""
    import torch

    torch.manual_seed(settings.seed)
    streamer = _FirstToken(write, tokenizer, settings.stop) if settings.num_beams == 1 else None
    began = time.perf_counter()
    [(ids, text, reason)] = _decode_batch(model, tokenizer, [prompt.ids], settings, streamer=streamer)
    elapsed = time.perf_counter() - began
    if streamer is None:
        write(text)
    elif streamer.printer is not None and streamer.printer.shown < len(text):
        write(text[streamer.printer.shown :])  # defensive: the stream and the final text agree
    if stats is not None:
        first = streamer.first_at - began if streamer is not None and streamer.first_at is not None else None
        stats.add(GenerationStats(prompts=1, new_tokens=len(ids), seconds=elapsed, first_token_s=first))
    return GenerationResult(text, ids, len(prompt.ids), len(ids), reason, prompt.truncated, prompt.dropped_turns)


def settings_dict(section: GenerateSection) -> dict[str, Any]:
    """The decoding settings as plain JSON values, as recorded beside every output."""
    return {key: (list(value) if isinstance(value, (list, tuple)) else value) for key, value in asdict(section).items()}
