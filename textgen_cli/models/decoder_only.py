"""The `chatgpt` role: decoder-only models (whatever AutoModelForCausalLM loads: GPT-2, Llama, Qwen2,
Gemma 2, Mistral, ...): chat sequences with assistant-only loss, pretrained as a causal LM. And the
`prefix-lm` role: the same models with the prompt read both ways (T5's prefix LM)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textgen_cli.core.errors import UserError
from textgen_cli.models.flops import Lengths
from textgen_cli.models.role import Role, TextPrompt

if TYPE_CHECKING:
    pass


class DecoderOnly(Role):
    name = "chatgpt"
    is_encoder_decoder = False
    shifted_labels = True
    auto_class = "AutoModelForCausalLM"
    default_arch = "gpt2"
    text_prompt = TextPrompt(overhead=0, keep_start=False)
    left_padding = True

    def system_prompt(self, recipe) -> str:
        return recipe.prompt.system

    def default_prompt_format(self, task: str) -> str:
        return "chat"  # pairs tasks are finetuned as one-turn chats too

    def prompt_budget(self, context: int, max_new_tokens: int) -> int:
        budget = context - max_new_tokens
        if budget < 1:
            raise UserError(
                f"generate.max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's context of "
                f"{context} tokens; expected at most {context - 1}"
            )
        return budget

    def wrap_text(self, tokenizer, ids):
        return list(ids)

    def chat_prompt(self, encoder, messages):
        return encoder.encode(messages, add_generation_prompt=True)[0]

    def chat_tail(self, encoder) -> list[int]:
        return [encoder.role["assistant"]]

    def new_tokens(self, sequences, prompt_width):
        return sequences[:, prompt_width:]

    def can_start_from(self, found: Role) -> bool:
        from textgen_cli.models.roles import PREFIX_LM

        return found is self or found is PREFIX_LM  # the same weights; only the attention mask differs

    def finetune_examples(self, dialogues, tokenizer, loaded, context, count, start_id=None):
        """The chat sequence of each dialogue (the recipe's system prompt first), labels on the
        assistant turns only."""
        from textgen_cli.data.readers import with_system_prompt
        from textgen_cli.models.chat import chat_encoder
        from textgen_cli.objectives import ChatExamples, fit_chat

        encoder = chat_encoder(tokenizer)
        recipe = loaded.recipe
        sequences = []
        for dialogue in dialogues:
            messages = with_system_prompt(dialogue, self.system_prompt(recipe))
            fitted = fit_chat(encoder, dialogue.id, messages, context, recipe.data.too_long, count)
            if fitted is not None:
                sequences.append(fitted)
        return ChatExamples(sequences, pad_id=tokenizer.pad_token_id)

    def pretrain_sets(self, train_blocks, val_blocks, tokenizer, model, recipe):
        from textgen_cli.objectives import CausalBlocks

        return CausalBlocks(train_blocks), CausalBlocks(val_blocks)

    def pretrain_tokens_per_sequence(self, context, mask_ratio, poisson_lambda):
        return 0.0, float(context)  # a full packed block

    def scoring_pair(self, prompt, target, context):
        from textgen_cli.objectives import IGNORE_INDEX

        # keep the whole reference; the prompt loses its oldest tokens if both do not fit
        prompt = prompt[-(context - len(target)) :]
        return prompt + target, [IGNORE_INDEX] * len(prompt) + target

    def scoring_set(self, pairs, tokenizer, model):
        from textgen_cli.objectives import ChatExamples

        return ChatExamples(pairs, pad_id=tokenizer.pad_token_id)

    def flops_params(self, model, embeddings):
        return 0, sum(p.numel() for p in model.parameters() if id(p) not in embeddings)

    def stack(self, layers: int) -> str:
        return f"decoder-only {layers}"

    def source_budget(self, context: int) -> str:
        return f"shares {context} with the reply"

    def prompt_cache(self, model, input_ids, attention_mask):
        """Each left-padded prompt but its last token, read causally at the positions `generate`
        gives left-padded rows (their real tokens count from 0)."""
        import inspect

        import torch

        if input_ids.size(1) < 2:
            return None  # nothing before the last token to cache
        prefix = attention_mask[:, :-1]
        positions = (prefix.long().cumsum(-1) - 1).clamp(min=0)
        # only the cache is wanted: the output layer over every prompt position would cost, with
        # SmolLM2's 49,152 tokens, about a fifth of the prompt's whole forward pass
        skip_logits = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
        with torch.inference_mode():
            out = model(
                input_ids=input_ids[:, :-1],
                attention_mask=self.prompt_mask(model, prefix),
                position_ids=positions,
                use_cache=True,
                **skip_logits,
            )
        return out.cache if "cache" in out else out.past_key_values  # renamed in transformers 5

    def prompt_mask(self, model, prefix):
        """The attention mask the prompt is read with: causal over the real tokens."""
        return prefix

    def batch_lengths(self, batch):
        """The one stack reads every non-pad position (the attention mask), per row."""
        import torch

        inputs = batch["attention_mask"].sum(dim=1).to(torch.float64)
        return Lengths(decoder=float(inputs.sum()), decoder_sq=float((inputs**2).sum()))


class PrefixLM(DecoderOnly):
    """A decoder-only model whose prompt (the source) attends to itself both ways and whose reply
    attends causally (T5's prefix LM, Raffel et al. 2020 §3.2.1). The same layouts and parameters as
    `chatgpt`; only the attention mask differs, so it is the third arm of T5's architecture table.

    Each assistant turn is its own example (as for `sora`): the prefix is everything before the
    reply's start token (the assistant tag), so decoding reads the prefix once and extends causally
    from the start token, and cached decoding equals a full forward pass at every step (tested)."""

    name = "prefix-lm"

    @property
    def kind(self) -> str:
        return "prefix LM"

    @property
    def layouts_of(self) -> str:
        return DecoderOnly.name

    def can_start_from(self, found: Role) -> bool:
        from textgen_cli.models.roles import DECODER_ONLY

        return found is self or found is DECODER_ONLY  # any causal LM can be finetuned as a prefix LM

    def finetune_examples(self, dialogues, tokenizer, loaded, context, count, start_id=None):
        """One sequence per assistant turn: the chat up to it (the recipe's system prompt first),
        labels on that reply only."""
        from textgen_cli.data.readers import with_system_prompt
        from textgen_cli.models.chat import chat_encoder
        from textgen_cli.objectives import IGNORE_INDEX, ChatExamples, fit_chat

        encoder = chat_encoder(tokenizer)
        recipe = loaded.recipe
        sequences = []
        for dialogue in dialogues:
            messages = with_system_prompt(dialogue, self.system_prompt(recipe))
            for position, turn in enumerate(messages):
                if turn["role"] != "assistant":
                    continue
                fitted = fit_chat(encoder, dialogue.id, messages[: position + 1], context, recipe.data.too_long, count)
                if fitted is None:
                    continue
                ids, labels = fitted
                reply = len(ids) - 1 - ids[::-1].index(encoder.role["assistant"])  # the last reply's tag
                sequences.append((ids, [IGNORE_INDEX] * (reply + 1) + labels[reply + 1 :]))
        return ChatExamples(sequences, pad_id=tokenizer.pad_token_id, prefix_lm=True)

    def pretrain_sets(self, train_blocks, val_blocks, tokenizer, model, recipe):
        from textgen_cli.objectives import PrefixBlocks

        return PrefixBlocks(train_blocks, recipe.train.seed), PrefixBlocks(val_blocks, recipe.train.seed)

    def pretrain_tokens_per_sequence(self, context, mask_ratio, poisson_lambda):
        return 0.0, float(context)  # a full packed block, prefix and continuation in one stack

    def scoring_set(self, pairs, tokenizer, model):
        from textgen_cli.objectives import ChatExamples

        return ChatExamples(pairs, pad_id=tokenizer.pad_token_id, prefix_lm=True)

    def decoding_inputs(self, model, input_ids, attention_mask, num_beams):
        """Read each (left-padded) prompt but its last token, the reply's start token, with the
        prefix mask and return that cache: `model.generate` then goes on from the start token
        causally, and every new token sees the prefix as training showed it."""
        cache = self.prompt_cache(model, input_ids, attention_mask)
        if cache is None:
            return {}  # no prefix: the start token alone
        if num_beams > 1:
            cache.batch_repeat_interleave(num_beams)  # generate expands each prompt into its beams
        return {cache_argument(model): cache}

    def prompt_mask(self, model, prefix):
        """The prompt but its start token, read both ways (the prefix mask)."""
        from textgen_cli.objectives import prefix_lm_mask

        return prefix_lm_mask(prefix, prefix.sum(-1), next(model.parameters()).dtype)

    def stack(self, layers: int) -> str:
        return f"prefix LM {layers}"

    def source_budget(self, context: int) -> str:
        return f"shares {context} with the reply, read both ways"


def cache_argument(model) -> str:
    """The name `model.generate` takes a key/value cache under (`cache` in newer transformers)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
