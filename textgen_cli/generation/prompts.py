"""Prompts for `textgen generate` and `textgen evaluate`, built exactly as the finetuning data was.

- `chatgpt`, prompt format `chat`: the conversation (the recipe's system prompt, then the turns)
  through `ChatEncoder.encode(..., add_generation_prompt=True)`: the ids of
  `tokenizer.apply_chat_template`, ending with `<|assistant|>`; the reply stops at eos. A tokenizer
  with a chat template of its own is prompted with that template (models/chat.py).
- `chatgpt`, prompt format `text` (a pretrain checkpoint): the plain text, continued.
- `sora`, prompt format `text` (pairs task, or a pretrain checkpoint): `[bos] + text + [eos]`.
- `sora`, prompt format `chat` (dialogue task): the role-tagged history, `ChatEncoder.encode_history`.

Which of these a model gets is its role's to say (models/roles.py); `family` arguments take a
family name or a role. A prompt that does not fit the model's context loses its oldest turns, then
the end of its last message (`build_prompt`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

from textgen_cli.core.errors import UserError
from textgen_cli.core.schema import GenerateSection
from textgen_cli.data.readers import ROLES, Messages
from textgen_cli.models import Role, context_of, role_for, role_of_model
from textgen_cli.models.chat import chat_encoder
from textgen_cli.objectives import ChatEncoder, encode_texts

PromptInput = Union[str, Messages]  # noqa: UP007 (a runtime alias); a plain prompt, or a conversation ending with a user turn
PROMPT_FORMATS = ("chat", "text")


def model_context(model) -> int:
    """The model's context: its config's field (textgen records one for T5 too), else 1024."""
    return context_of(model.config) or 1024


def prompt_budget(model, settings: GenerateSection) -> int:
    """Most prompt tokens a prompt may have, so that prompt and reply fit the model's context."""
    return role_of_model(model).prompt_budget(model_context(model), settings.max_new_tokens)


def prompt_format(
    family: str | Role, task: str = "pairs", stage: str | None = "finetune", requested: str = "auto"
) -> str:
    """`chat` or `text`: how prompts are encoded (see the module docstring)."""
    if requested in PROMPT_FORMATS:
        return requested
    if stage == "pretrain":
        return "text"
    return role_for(family).default_prompt_format(task)


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
            if (
                not isinstance(turn, dict)
                or not isinstance(turn.get("role"), str)
                or not isinstance(turn.get("content"), str)
            ):
                raise UserError(
                    f"{where}: each turn must be an object with string fields 'role' and 'content', got {turn!r}"
                )
            if turn["role"] not in ROLES:
                raise UserError(f"{where}: unknown role '{turn['role']}'; expected one of {', '.join(ROLES)}")
            turns.append({"role": turn["role"], "content": turn["content"]})
        if turns[-1]["role"] != "user":
            raise UserError(
                f"{where}: the dialogue ends with a '{turns[-1]['role']}' turn; expected a 'user' turn to reply to"
            )
        if not turns[-1]["content"].strip():
            raise UserError(f"{where}: the last user turn is empty; expected some text")
        return turns
    raise UserError(
        f"{where}: expected a prompt string or a list of {{role, content}} turns, got {type(item).__name__}"
    )


def chat_messages(item: PromptInput, system: str = "") -> Messages:
    """The conversation for a prompt: the system prompt first (unless the dialogue has its own)."""
    turns = [{"role": "user", "content": item}] if isinstance(item, str) else list(item)
    if system and not (turns and turns[0]["role"] == "system"):
        turns = [{"role": "system", "content": system}, *turns]
    return turns


def build_prompt(
    tokenizer,
    item: PromptInput,
    family: str | Role,
    fmt: str,
    budget: int,
    system: str = "",
    too_long: str = "truncate",
    where: str = "prompt",
) -> Prompt:
    """Token ids of one prompt, at most `budget` long.

    Messagess that do not fit lose their oldest turns first (the system turn stays), and a reply is
    always to a user turn. If the last message alone is still too long, `too_long` decides:
    `truncate` keeps its beginning (for `chatgpt` plain text, its end: that is what gets continued),
    `error` raises a UserError.
    """
    role = role_for(family)
    item = check_input(item, where)
    encoder = chat_encoder(tokenizer)
    if fmt == "text":
        text = item if isinstance(item, str) else item[-1]["content"]
        ids = encode_texts(tokenizer, [text])[0]
        extra = role.text_prompt.overhead
        if len(ids) + extra > budget:
            if too_long == "error":
                raise UserError(
                    f"{where}: the prompt is {len(ids) + extra} tokens, more than the {budget} that fit (generate.too_long=error)"
                )
            if budget - extra < 1:
                raise UserError(f"{where}: no room for the prompt: only {budget} tokens fit")
            ids = ids[: budget - extra] if role.text_prompt.keep_start else ids[len(ids) - (budget - extra) :]
            return Prompt(role.wrap_text(tokenizer, ids), truncated=True)
        return Prompt(role.wrap_text(tokenizer, ids))

    messages = chat_messages(item, system)
    head = [messages[0]] if messages[0]["role"] == "system" else []
    turns = messages[len(head) :]

    def encode(conversation: Messages) -> list[int]:
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
        raise UserError(
            f"{where}: the last message makes a prompt of {len(ids)} tokens, more than the {budget} that fit (generate.too_long=error)"
        )
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
        raise UserError(
            f"{where}: no room for the message: the system prompt and the chat markup alone take {budget - room} of the {budget} tokens that fit"
        )
    turn_ids, _ = encoder.turn(last, content[:room])
    return Prompt([*prefix, *turn_ids, *tail], truncated=True, dropped_turns=dropped)


def _cut_last_turn(
    tokenizer,
    encode: Callable[[Messages], list[int]],
    before: Messages,
    last: dict[str, str],
    content: list[int],
    budget: int,
    dropped: int,
    where: str,
) -> Prompt:
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
        raise UserError(
            f"{where}: no room for the message: the system prompt and the chat markup alone take {len(rendered(0))} of the {budget} tokens that fit"
        )
    return Prompt(rendered(low), truncated=True, dropped_turns=dropped)
