"""Chat encoding: textgen's own template, or the tokenizer's own one when it brings one.

A tokenizer with its own chat template (Qwen, Llama instruct, ...) is prompted with it, byte for
byte as `tokenizer.apply_chat_template` renders it; the assistant-only labels come from rendering
the conversation up to each assistant turn (with the generation prompt) and up to its end: the
tokens in between are that turn's reply and its end-of-turn markup.
"""

from __future__ import annotations

from textgen_cli.core.errors import UserError
from textgen_cli.objectives import IGNORE_INDEX, ChatEncoder


def chat_encoder(tokenizer):
    """The encoder that builds the ids a model is finetuned and prompted with."""
    from textgen_cli.data.tokenizer import has_own_chat_template

    return TemplateChatEncoder(tokenizer) if has_own_chat_template(tokenizer) else ChatEncoder(tokenizer)


class TemplateChatEncoder:
    """Chat ids through the tokenizer's own template; same interface as objectives.ChatEncoder."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.bos = tokenizer.bos_token_id
        self.eos = tokenizer.eos_token_id

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
        if not messages:
            return []
        try:
            out = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True
            )
        except Exception as exc:  # jinja raises its own errors (e.g. a template that wants alternating roles)
            raise UserError(
                f"the tokenizer's chat template cannot render this conversation: {str(exc).splitlines()[0]}"
            ) from exc
        return list(out["input_ids"])

    def encode(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = False
    ) -> tuple[list[int], list[int]]:
        ids = self.render(messages, add_generation_prompt)
        labels = [IGNORE_INDEX] * len(ids)
        for position, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self.render(messages[:position], add_generation_prompt=True)
            through = self.render(messages[: position + 1], add_generation_prompt=False)
            if through[: len(before)] != before or ids[: len(through)] != through:
                raise UserError(
                    "the tokenizer's chat template does not render a conversation as the prefix of its continuation, "
                    "so the reply tokens to learn cannot be found; remove its chat_template to use textgen's own"
                )
            labels[len(before) : len(through)] = ids[len(before) : len(through)]
        return ids, labels

    def encode_history(self, messages: list[dict[str, str]]) -> list[int]:
        """An encoder-decoder source: the rendered history, ending with eos."""
        ids = self.render(messages, add_generation_prompt=False)
        return ids if ids and ids[-1] == self.eos else [*ids, self.eos]
