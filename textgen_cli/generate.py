"""`textgen generate`: decode from a trained model, one prompt (streamed), a batch, or a chat session.

Prompts are built exactly as the finetuning data was:

- `chatgpt`, prompt format `chat`: the conversation (the recipe's system prompt, then the turns)
  through `ChatEncoder.encode(..., add_generation_prompt=True)`: the ids of
  `tokenizer.apply_chat_template`, ending with `<|assistant|>`; the reply stops at eos. A tokenizer
  with a chat template of its own is prompted with that template (models/chat.py).
- `chatgpt`, prompt format `text` (a pretrain checkpoint): the plain text, continued.
- `sora`, prompt format `text` (pairs task, or a pretrain checkpoint): `[bos] + text + [eos]`.
- `sora`, prompt format `chat` (dialogue task): the role-tagged history, `ChatEncoder.encode_history`.

Which of these a model gets is its role's to say (models/roles.py); `family` arguments take a
family name or a role. The functions here print nothing: the CLI (and `evaluate`) call `generate_batch` and friends and
decide what to show.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence, TextIO, Union

from textgen_cli.errors import UserError
from textgen_cli.objectives import ChatEncoder, encode_texts

if TYPE_CHECKING:
    import torch

    from textgen_cli.models import Role
    from textgen_cli.schema import GenerateSection, Recipe

Dialogue = list[dict[str, str]]
PromptInput = Union[str, Dialogue]
ROLES = ("system", "user", "assistant")
PROMPT_FORMATS = ("chat", "text")


# --------------------------------------------------------------------------------------------
# Settings


def check_settings(section: "GenerateSection", source: str = "recipe", override_keys: Iterable[str] = ()) -> None:
    """Range checks for the `generate:` section, worded like the recipe's own errors."""
    override_keys = set(override_keys)

    def fail(key: str, expected: str, value: Any) -> None:
        where = "command line override" if f"generate.{key}" in override_keys else source
        raise UserError(f"{where}: key 'generate.{key}': expected {expected}, got {value!r}")

    s = section
    if s.max_new_tokens < 1:
        fail("max_new_tokens", "a positive integer", s.max_new_tokens)
    if not 0 <= s.min_new_tokens <= s.max_new_tokens:
        fail("min_new_tokens", f"an integer in [0, generate.max_new_tokens={s.max_new_tokens}]", s.min_new_tokens)
    if not s.temperature > 0:
        fail("temperature", "a positive number (for greedy decoding set generate.do_sample=false)", s.temperature)
    if s.top_k < 0:
        fail("top_k", "an integer >= 0 (0 disables top-k)", s.top_k)
    if not 0 < s.top_p <= 1:
        fail("top_p", "a probability in (0, 1]", s.top_p)
    if s.num_beams < 1:
        fail("num_beams", "a positive integer", s.num_beams)
    if not s.repetition_penalty > 0:
        fail("repetition_penalty", "a positive number (1.0 disables it)", s.repetition_penalty)
    if s.no_repeat_ngram_size < 0:
        fail("no_repeat_ngram_size", "an integer >= 0 (0 disables it)", s.no_repeat_ngram_size)
    if s.batch_size < 1:
        fail("batch_size", "a positive integer", s.batch_size)
    if any(not isinstance(stop, str) or stop == "" for stop in s.stop):
        fail("stop", "a list of non-empty strings", list(s.stop))


def settings_dict(section: "GenerateSection") -> dict[str, Any]:
    return {key: (list(value) if isinstance(value, (list, tuple)) else value) for key, value in asdict(section).items()}


def model_context(model) -> int:
    """The model's context: its config's field (textgen records one for T5 too), else 1024."""
    from textgen_cli.models import context_of

    return context_of(model.config) or 1024


def prompt_budget(model, settings: "GenerateSection") -> int:
    """Most prompt tokens a prompt may have, so that prompt and reply fit the model's context."""
    from textgen_cli.models import role_of_model

    return role_of_model(model).prompt_budget(model_context(model), settings.max_new_tokens)


def prompt_format(family: "str | Role", task: str = "pairs", stage: str | None = "finetune", requested: str = "auto") -> str:
    """`chat` or `text`: how prompts are encoded (see the module docstring)."""
    from textgen_cli.models import role_for

    if requested in PROMPT_FORMATS:
        return requested
    if stage == "pretrain":
        return "text"
    return role_for(family).default_prompt_format(task)


# --------------------------------------------------------------------------------------------
# Prompts


@dataclass
class Prompt:
    ids: list[int]
    truncated: bool = False  # the text of the last message was cut to fit
    dropped_turns: int = 0  # oldest turns left out to fit


def check_input(item: Any, where: str = "prompt") -> PromptInput:
    """A plain prompt (non-empty string) or a dialogue (turns ending with a user turn)."""
    if isinstance(item, str):
        if not item.strip():
            raise UserError(f"{where}: empty prompt; expected some text")
        return item
    if isinstance(item, list):
        if not item:
            raise UserError(f"{where}: empty dialogue; expected a list of {{role, content}} turns")
        turns = []
        for turn in item:
            if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or not isinstance(turn.get("content"), str):
                raise UserError(f"{where}: each turn must be an object with string fields 'role' and 'content', got {turn!r}")
            if turn["role"] not in ROLES:
                raise UserError(f"{where}: unknown role '{turn['role']}'; expected one of {', '.join(ROLES)}")
            turns.append({"role": turn["role"], "content": turn["content"]})
        if turns[-1]["role"] != "user":
            raise UserError(f"{where}: the dialogue ends with a '{turns[-1]['role']}' turn; expected a 'user' turn to reply to")
        if not turns[-1]["content"].strip():
            raise UserError(f"{where}: the last user turn is empty; expected some text")
        return turns
    raise UserError(f"{where}: expected a prompt string or a list of {{role, content}} turns, got {type(item).__name__}")


def chat_messages(item: PromptInput, system: str = "") -> Dialogue:
    """The conversation for a prompt: the system prompt first (unless the dialogue has its own)."""
    turns = [{"role": "user", "content": item}] if isinstance(item, str) else list(item)
    if system and not (turns and turns[0]["role"] == "system"):
        turns = [{"role": "system", "content": system}, *turns]
    return turns


def chatgpt_prompt_ids(tokenizer, messages: Dialogue) -> list[int]:
    """The chat prompt the model was finetuned on: `apply_chat_template(..., add_generation_prompt=True)` ids."""
    from textgen_cli.models.chat import chat_encoder

    return chat_encoder(tokenizer).encode(messages, add_generation_prompt=True)[0]


def sora_source_ids(tokenizer, item: PromptInput, fmt: str) -> list[int]:
    """The encoder input: `[bos] + text + [eos]` (format `text`) or the role-tagged history (format `chat`)."""
    from textgen_cli.models import ENCODER_DECODER
    from textgen_cli.models.chat import chat_encoder

    if fmt == "chat":
        return chat_encoder(tokenizer).encode_history(chat_messages(item))
    text = item if isinstance(item, str) else item[-1]["content"]
    return ENCODER_DECODER.wrap_text(tokenizer, encode_texts(tokenizer, [text])[0])


def build_prompt(tokenizer, item: PromptInput, family: "str | Role", fmt: str, budget: int, system: str = "", too_long: str = "truncate", where: str = "prompt") -> Prompt:
    """Token ids of one prompt, at most `budget` long.

    Dialogues that do not fit lose their oldest turns first (the system turn stays), and a reply is
    always to a user turn. If the last message alone is still too long, `too_long` decides:
    `truncate` keeps its beginning (for `chatgpt` plain text, its end: that is what gets continued),
    `error` raises a UserError.
    """
    from textgen_cli.models import role_for
    from textgen_cli.models.chat import chat_encoder

    role = role_for(family)
    item = check_input(item, where)
    encoder = chat_encoder(tokenizer)
    if fmt == "text":
        text = item if isinstance(item, str) else item[-1]["content"]
        ids = encode_texts(tokenizer, [text])[0]
        extra = role.text_prompt.overhead
        if len(ids) + extra > budget:
            if too_long == "error":
                raise UserError(f"{where}: the prompt is {len(ids) + extra} tokens, more than the {budget} that fit (generate.too_long=error)")
            if budget - extra < 1:
                raise UserError(f"{where}: no room for the prompt: only {budget} tokens fit")
            ids = ids[: budget - extra] if role.text_prompt.keep_start else ids[len(ids) - (budget - extra) :]
            return Prompt(role.wrap_text(tokenizer, ids), truncated=True)
        return Prompt(role.wrap_text(tokenizer, ids))

    messages = chat_messages(item, system)
    head = [messages[0]] if messages[0]["role"] == "system" else []
    turns = messages[len(head) :]

    def encode(conversation: Dialogue) -> list[int]:
        return role.chat_prompt(encoder, conversation)

    ids = encode(head + turns)
    dropped = 0
    while len(ids) > budget and len(turns) > 1:
        turns.pop(0)
        dropped += 1
        while len(turns) > 1 and turns[0]["role"] != "user":
            turns.pop(0)
            dropped += 1
        ids = encode(head + turns)
    if len(ids) <= budget:
        return Prompt(ids, dropped_turns=dropped)
    if too_long == "error":
        raise UserError(f"{where}: the last message makes a prompt of {len(ids)} tokens, more than the {budget} that fit (generate.too_long=error)")
    last = turns[-1]
    content = encode_texts(tokenizer, [last["content"]])[0]
    if not isinstance(encoder, ChatEncoder):
        return _cut_last_turn(tokenizer, encode, head + turns[:-1], last, content, budget, dropped, where)
    # cut the text of the last (user) turn, keeping its beginning; built from ids, never re-tokenized
    prefix, _ = encoder.encode(head + turns[:-1])
    turn_ids, _ = encoder.turn(last, [])
    tail = role.chat_tail(encoder)
    room = budget - len(prefix) - len(turn_ids) - len(tail)
    if room < 1:
        raise UserError(f"{where}: no room for the message: the system prompt and the chat markup alone take {budget - room} of the {budget} tokens that fit")
    turn_ids, _ = encoder.turn(last, content[:room])
    return Prompt([*prefix, *turn_ids, *tail], truncated=True, dropped_turns=dropped)


def _cut_last_turn(tokenizer, encode: Callable[[Dialogue], list[int]], before: Dialogue, last: dict[str, str], content: list[int], budget: int, dropped: int, where: str) -> Prompt:
    """The tokenizer's own chat template: the longest beginning of the last message whose rendered
    prompt fits (binary search over its tokens; the template renders text, so the cut is decoded)."""

    def rendered(n: int) -> list[int]:
        return encode([*before, {**last, "content": tokenizer.decode(content[:n])}])

    low, high = 0, len(content)
    while low < high:
        middle = (low + high + 1) // 2
        if len(rendered(middle)) <= budget:
            low = middle
        else:
            high = middle - 1
    if low < 1:
        raise UserError(f"{where}: no room for the message: the system prompt and the chat markup alone take {len(rendered(0))} of the {budget} tokens that fit")
    return Prompt(rendered(low), truncated=True, dropped_turns=dropped)


# --------------------------------------------------------------------------------------------
# Decoding


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

    def add(self, other: "GenerationStats") -> None:
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


def generation_config(model, tokenizer, settings: "GenerateSection"):
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
    from textgen_cli.models import role_of_model

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


def _decode_batch(model, tokenizer, prompts: Sequence[list[int]], settings: "GenerateSection", streamer=None) -> list[tuple[list[int], str, str]]:
    """One `model.generate` call over a batch: (new ids, text, finish reason) per prompt."""
    import torch

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    from textgen_cli.models import role_of_model

    role = role_of_model(model)
    for row, ids in enumerate(prompts):
        # decoder-only: left padding, so that every row's next token comes right after its prompt
        span = slice(width - len(ids), width) if role.left_padding else slice(0, len(ids))
        input_ids[row, span] = torch.as_tensor(ids, dtype=torch.long)
        attention_mask[row, span] = 1
    config = generation_config(model, tokenizer, settings)
    kwargs: dict[str, Any] = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device), "generation_config": config}
    if settings.stop:
        kwargs["tokenizer"] = tokenizer
    if streamer is not None:
        kwargs["streamer"] = streamer
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
    settings: "GenerateSection",
    family: "str | Role",
    task: str = "pairs",
    batch_size: int | None = None,
    *,
    system: str = "",
    fmt: str | None = None,
    stats: GenerationStats | None = None,
    on_batch: Callable[[int, int, GenerationStats], None] | None = None,
    labels: Sequence[str] | None = None,
) -> list[GenerationResult]:
    """Batched decoding: one result per input, in input order; prints nothing.

    `inputs` are plain prompts or dialogues (lists of {role, content} turns ending with a user turn).
    `fmt` defaults to what a finetuned model of `family` on `task` was trained with. Prompts are sorted
    by length into batches of `batch_size` (default `settings.batch_size`) to waste little on padding.
    Greedy results do not depend on the batch size. `on_batch(done, total, batch_stats)` reports progress;
    `labels` name the inputs in error messages (default: "input N").
    """
    import torch

    fmt = fmt or prompt_format(family, task)
    budget = prompt_budget(model, settings)
    prompts = [
        build_prompt(tokenizer, item, family, fmt, budget, system, settings.too_long, where=labels[index] if labels else f"input {index + 1}")
        for index, item in enumerate(inputs)
    ]
    size = batch_size or settings.batch_size
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i].ids))
    results: list[GenerationResult | None] = [None] * len(prompts)
    torch.manual_seed(settings.seed)
    total = stats if stats is not None else GenerationStats()
    for start in range(0, len(order), size):
        chosen = order[start : start + size]
        timer = _FirstToken() if settings.num_beams == 1 else None
        began = time.perf_counter()
        decoded = _decode_batch(model, tokenizer, [prompts[i].ids for i in chosen], settings, streamer=timer)
        elapsed = time.perf_counter() - began
        batch = GenerationStats(prompts=len(chosen), seconds=elapsed)
        if timer is not None and timer.first_at is not None:
            batch.first_token_s = timer.first_at - began
        for index, (ids, text, reason) in zip(chosen, decoded):
            prompt = prompts[index]
            results[index] = GenerationResult(text, ids, len(prompt.ids), len(ids), reason, prompt.truncated, prompt.dropped_turns)
            batch.new_tokens += len(ids)
        total.add(batch)
        if on_batch is not None:
            on_batch(min(start + size, len(order)), len(order), batch)
    return results  # type: ignore[return-value]


def generate_stream(model, tokenizer, prompt: Prompt, settings: "GenerateSection", write: Callable[[str], None], stats: GenerationStats | None = None) -> GenerationResult:
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


# --------------------------------------------------------------------------------------------
# Models and recipes


@dataclass
class Generator:
    """A loaded model with everything needed to prompt it the way it was trained."""

    model: Any
    tokenizer: Any
    family: str  # the role the model plays: `sora` or `chatgpt`
    fmt: str  # `chat` or `text`
    task: str
    system: str  # the recipe's system prompt (applied to `chatgpt` chats)
    settings: "GenerateSection"
    path: Path
    stage: str | None
    recipe: "Recipe | None" = None

    @property
    def role(self) -> "Role":
        from textgen_cli.models import role_for

        return role_for(self.family)

    @property
    def budget(self) -> int:
        return prompt_budget(self.model, self.settings)

    def prompt(self, item: PromptInput, system: str | None = None, where: str = "prompt") -> Prompt:
        return build_prompt(self.tokenizer, item, self.family, self.fmt, self.budget, self.system if system is None else system, self.settings.too_long, where)

    def batch(self, inputs: Sequence[PromptInput], stats: GenerationStats | None = None, on_batch=None, labels: Sequence[str] | None = None) -> list[GenerationResult]:
        return generate_batch(
            self.model, self.tokenizer, inputs, self.settings, self.family, self.task, self.settings.batch_size,
            system=self.system, fmt=self.fmt, stats=stats, on_batch=on_batch, labels=labels,
        )


def trained_model(loaded, stage: str | None = None) -> tuple[Path, str]:
    """The recipe's latest trained model: the output of its last stage that has one (finetune before
    pretrain), or of `stage`."""
    from textgen_cli.runs import FINAL_DIR
    from textgen_cli.schema import STAGES

    candidates = [stage] if stage else list(reversed(STAGES))
    for name in candidates:
        path = loaded.run_dir(name) / FINAL_DIR
        if path.is_dir():
            return path, name
    if stage:
        raise UserError(
            f"recipe '{loaded.name}' has no trained {stage} model: '{loaded.run_dir(stage) / FINAL_DIR}' does not exist; "
            f"run `textgen {stage} --recipe {loaded.path.name}` first"
        )
    first = loaded.recipe.stages[0] if loaded.recipe.stages else "pretrain"
    tried = ", ".join(f"'{loaded.run_dir(name) / FINAL_DIR}'" for name in candidates)
    raise UserError(
        f"recipe '{loaded.name}' has no trained model (none of {tried} exists); "
        f"run `textgen {first} --recipe {loaded.path.name}` first, or pass --model DIR"
    )


def checkpoint_stage(path: Path) -> str | None:
    """Which stage wrote a checkpoint: from its run's summary.json, else the folder name."""
    from textgen_cli.runs import SUMMARY_FILE
    from textgen_cli.schema import STAGES

    summary = path.parent / SUMMARY_FILE
    if summary.is_file():
        try:
            stage = json.loads(summary.read_text(encoding="utf-8")).get("stage")
            if stage in STAGES:
                return stage
        except (ValueError, UnicodeDecodeError, AttributeError):
            pass
    return path.parent.name if path.parent.name in STAGES else None


def recipe_for_checkpoint(path: Path, family: str, overrides: list[str]):
    """The recipe a textgen run saved beside the checkpoint, else the schema defaults; overrides applied."""
    from textgen_cli.recipe import load_recipe
    from textgen_cli.runs import RECIPE_FILE

    saved = path.parent / RECIPE_FILE
    if saved.is_file():
        return load_recipe(str(saved), overrides)
    with tempfile.TemporaryDirectory(prefix="textgen-") as folder:
        base = Path(folder) / "defaults.yaml"
        base.write_text(f"model: {{family: {family}}}\nstages: []\n", encoding="utf-8")
        return load_recipe(str(base), overrides)


def choose_device(name: str):
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("generate.device=cuda but no CUDA device is available; use generate.device=auto or cpu")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def load_generate_recipe(recipe: str | None, model_dir: str | None, overrides: list[str] | None = None):
    """The recipe that supplies decoding settings and the system prompt: --recipe, else the one saved
    beside the --model checkpoint by its training run, else the schema defaults."""
    from textgen_cli.models import family_of_checkpoint
    from textgen_cli.recipe import load_recipe

    if recipe is None and model_dir is None:
        raise UserError("give --recipe NAME (uses its latest trained model) or --model DIR")
    if recipe is not None:
        return load_recipe(recipe, overrides)
    path = Path(model_dir).expanduser()  # type: ignore[arg-type]
    if not path.is_dir():
        raise UserError(f"model directory '{model_dir}' does not exist")
    return recipe_for_checkpoint(path, family_of_checkpoint(path), list(overrides or []))


def load_generator(recipe: str | None, model_dir: str | None, stage: str | None = None, overrides: list[str] | None = None, loaded=None) -> Generator:
    """Load the model to generate from, with the settings and prompt format it needs
    (`loaded`: the result of `load_generate_recipe` for the same arguments, if already at hand)."""
    from textgen_cli.models import family_of_checkpoint, load_pretrained, role_for
    from textgen_cli.schema import STAGES

    overrides = list(overrides or [])
    if stage is not None and stage not in STAGES:
        raise UserError(f"--stage {stage}: expected one of {', '.join(STAGES)}")
    if model_dir is not None and stage is not None:
        raise UserError("--stage picks one of the recipe's trained models; it cannot be combined with --model")
    loaded = loaded or load_generate_recipe(recipe, model_dir, overrides)
    r: Recipe = loaded.recipe
    if model_dir is not None:
        path = Path(model_dir).expanduser()
        # with --recipe too, the checkpoint must be of the recipe's family (load_checkpoint says so)
        family = r.model.family if recipe is not None else family_of_checkpoint(path)
        found_stage = checkpoint_stage(path)
    else:
        family = r.model.family
        path, found_stage = trained_model(loaded, stage)
    check_settings(r.generate, str(loaded.path), {item.split("=", 1)[0] for item in overrides})
    device = choose_device(r.generate.device)
    _quiet_transformers()
    # any save_pretrained checkpoint: its tokenizer gets what textgen needs (nothing, for textgen's own)
    pretrained = load_pretrained(path, family, context=r.model.context)
    model, tokenizer = pretrained.model, pretrained.tokenizer
    model.to(device).eval()
    role = role_for(family)
    fmt = prompt_format(role, r.data.finetune.task, found_stage, r.generate.prompt_format)
    return Generator(model, tokenizer, role.name, fmt, r.data.finetune.task, role.system_prompt(r), r.generate, path, found_stage, r)


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


# --------------------------------------------------------------------------------------------
# Batch inputs and outputs


@dataclass
class InputRecord:
    item: PromptInput
    where: str
    id: Any = None


def parse_input_line(line: str, where: str, fields: Sequence[str] = ("prompt",), dialogue_fields: Sequence[str] = ("messages",), json_only: bool = False) -> InputRecord | None:
    """One input line: JSON (an object with a prompt or messages field, a string, or a list of turns),
    or, unless `json_only`, plain text. Blank lines are skipped (None)."""
    stripped = line.strip()
    if not stripped:
        return None
    if json_only or stripped[0] in "{[\"":
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); expected an object with a 'prompt' or 'messages' field") from None
    else:
        return InputRecord(check_input(line.rstrip("\r\n"), where), where)
    record_id = None
    if isinstance(value, dict):
        record_id = value.get("id")
        text_key = next((key for key in fields if key in value), None)
        turns_key = next((key for key in dialogue_fields if key in value), None)
        if turns_key is not None:
            value = value[turns_key]
            if not isinstance(value, list):
                raise UserError(f"{where}: field '{turns_key}' must be a list of {{role, content}} turns")
        elif text_key is not None:
            value = value[text_key]
            if not isinstance(value, str):
                raise UserError(f"{where}: field '{text_key}' must be a string, got {type(value).__name__}")
        else:
            expected = ", ".join(f"'{key}'" for key in (*fields, *dialogue_fields))
            raise UserError(f"{where}: the record has none of the fields {expected}; found: {', '.join(value) or 'none'}")
    return InputRecord(check_input(value, where), where, record_id)


def read_inputs(source: str, stream: TextIO | None = None, source_field: str = "source", messages_field: str = "messages") -> list[InputRecord]:
    """Prompts from a .txt file (one per line), a .jsonl/.json-lines file, or a stream (`-`: stdin)."""
    fields = tuple(dict.fromkeys(("prompt", source_field)))
    dialogue_fields = tuple(dict.fromkeys(("messages", messages_field)))
    if source == "-":
        handle = stream or sys.stdin
        lines, name, json_only = handle.read().splitlines(), "stdin", False
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise UserError(f"input file '{source}' does not exist" if not path.exists() else f"input '{source}' is not a file")
        suffix = path.suffix.lower()
        if suffix not in (".txt", ".text", ".jsonl", ".json"):
            raise UserError(f"{source}: unknown input format '{path.suffix}'; expected .txt (one prompt per line) or .jsonl")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise UserError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        name, json_only = source, suffix in (".jsonl", ".json")
        if suffix in (".txt", ".text"):
            records = [InputRecord(check_input(line, f"{name}:{n}"), f"{name}:{n}") for n, line in enumerate(lines, 1) if line.strip()]
            return _nonempty(records, source)
    records = []
    for number, line in enumerate(lines, start=1):
        record = parse_input_line(line, f"{name}:{number}", fields, dialogue_fields, json_only)
        if record is not None:
            records.append(record)
    return _nonempty(records, name)


def _nonempty(records: list[InputRecord], name: str) -> list[InputRecord]:
    if not records:
        raise UserError(f"{name}: no prompts found; expected one prompt per line (blank lines are skipped)")
    return records


def output_record(record: InputRecord, result: GenerationResult, settings: "GenerateSection", model_path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if record.id is not None:
        out["id"] = record.id
    out["messages" if isinstance(record.item, list) else "prompt"] = record.item
    out.update(
        output=result.output,
        prompt_tokens=result.prompt_tokens,
        output_tokens=result.new_tokens,
        finish_reason=result.finish_reason,
        truncated=result.truncated,
        dropped_turns=result.dropped_turns,
        model=str(model_path),
        settings=settings_dict(settings),
    )
    return out


# --------------------------------------------------------------------------------------------
# Chat


CHAT_HELP = "commands: /reset (forget the conversation), /system TEXT (set the system prompt; empty clears it), /save FILE, /exit (or Ctrl-D)"


@dataclass
class ChatSession:
    """A multi-turn conversation: it keeps the history and builds each prompt from all of it."""

    generator: Generator
    out: TextIO
    err: TextIO
    system: str = ""
    history: Dialogue = field(default_factory=list)
    stats: GenerationStats = field(default_factory=GenerationStats)
    told_dropped: int = 0

    def __post_init__(self) -> None:
        self.system = self.generator.system

    def say(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    def messages(self) -> Dialogue:
        return [*([{"role": "system", "content": self.system}] if self.system else []), *self.history]

    def handle(self, line: str) -> bool:
        """Process one input line; False ends the session."""
        text = line.rstrip("\r\n")
        if not text.strip():
            return True
        if text.startswith("/") and not text.startswith("//"):
            return self.command(text)
        if text.startswith("//"):
            text = text[1:]
        self.reply(text)
        return True

    def command(self, text: str) -> bool:
        name, _, argument = text.partition(" ")
        argument = argument.strip()
        if name in ("/exit", "/quit"):
            return False
        if name == "/reset":
            self.history, self.told_dropped = [], 0
            self.say("(conversation cleared)")
        elif name == "/system":
            self.system = argument
            self.say(f"(system prompt set: {argument!r})" if argument else "(system prompt cleared)")
        elif name == "/save":
            if not argument:
                self.say("usage: /save FILE")
                return True
            try:
                Path(argument).expanduser().write_text(json.dumps({"messages": self.messages()}, ensure_ascii=False) + "\n", encoding="utf-8")
                self.say(f"(saved {len(self.messages())} turns to {argument})")
            except OSError as exc:
                self.say(f"error: cannot save to '{argument}': {exc.strerror or exc}")
        elif name == "/help":
            self.say(CHAT_HELP)
        else:
            self.say(f"unknown command '{name}'; {CHAT_HELP}")
        return True

    def reply(self, text: str) -> None:
        g = self.generator
        if g.fmt == "chat":
            item: PromptInput = [*self.history, {"role": "user", "content": text}]
        else:
            item = text  # the model reads plain text: each message stands alone
        try:
            prompt = g.prompt(item, system=self.system, where="message")
        except UserError as exc:
            self.say(f"error: {exc}")
            return
        if prompt.dropped_turns and prompt.dropped_turns != self.told_dropped:
            self.say(f"(the conversation is longer than the model's context: the {prompt.dropped_turns} oldest turns are left out)")
            self.told_dropped = prompt.dropped_turns
        if prompt.truncated:
            self.say("(your message is longer than the model's context: only its beginning is used)")

        def write(chunk: str) -> None:
            self.out.write(chunk)
            self.out.flush()

        seeded = _with_seed(g.settings, g.settings.seed + len(self.history) // 2)
        result = generate_stream(g.model, g.tokenizer, prompt, seeded, write, self.stats)
        self.out.write("\n")
        self.out.flush()
        self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": result.output}]


def _with_seed(settings: "GenerateSection", seed: int) -> "GenerateSection":
    import dataclasses

    return dataclasses.replace(settings, seed=seed)


def run_chat(generator: Generator, stdin: TextIO, out: TextIO, err: TextIO, interactive: bool) -> GenerationStats:
    """Read messages and commands line by line until /exit or end of input (Ctrl-D)."""
    session = ChatSession(generator, out, err)
    what = "each prompt holds the conversation so far" if generator.fmt == "chat" else "no history: the model reads each message on its own (prompt format `text`)"
    session.say(f"chat with {generator.path} ({generator.family}; {what})\n{CHAT_HELP}")
    while True:
        if interactive:
            try:
                line = input("> ")
            except EOFError:
                out.write("\n")
                break
        else:
            line = stdin.readline()
            if not line:
                break
        if not session.handle(line):
            break
    return session.stats
