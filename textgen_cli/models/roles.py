"""The two roles a model can play, and everything that differs between them.

- `sora` is played by encoder-decoder models (whatever AutoModelForSeq2SeqLM loads: BART, T5,
  mBART, Pegasus, Marian, ...): source -> target, pretrained by text infilling.
- `chatgpt` is played by decoder-only models (whatever AutoModelForCausalLM loads: GPT-2, Llama,
  Qwen2, Mistral, GPT-NeoX, Phi, ...): chat sequences with assistant-only loss, pretrained as a
  causal LM.

The rest of textgen asks the role (objective, prompt encoding, system prompt, decoding layout,
likelihood scoring, FLOPs, the class that reloads a checkpoint, the pretraining objective) and never
tests a family name. The role of a checkpoint follows its config (`role_of_config`), not its name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from textgen_cli.core.errors import UserError
from textgen_cli.models.archs import ARCHS, Arch
from textgen_cli.models.flops import Lengths

# The config key that tells a saved prefix LM from a plain decoder-only model of the same layout.
FAMILY_KEY = "textgen_family"

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

    from textgen_cli.core.loaded_recipe import LoadedRecipe
    from textgen_cli.core.schema import ModelSection, Recipe
    from textgen_cli.data.readers import Dialogue
    from textgen_cli.objectives import TruncationCount


@dataclass
class TextPrompt:
    """How a plain-text prompt becomes ids: `ids` wrapped, or cut to `room` tokens first."""

    overhead: int  # tokens the wrapping adds
    keep_start: bool  # when cut: keep the beginning (a source to rewrite) or the end (text to continue)


class Role(ABC):
    """What differs between the families. Every abstract method must be written by each role: a role
    that lacks one cannot be created, so the module fails at import, not at the method's first call."""

    name: str
    is_encoder_decoder: bool
    auto_class: str  # the transformers Auto class that loads and reloads a checkpoint of this role
    default_arch: str
    text_prompt: TextPrompt
    left_padding: bool  # batched decoding: pad on the left so every row continues right after its prompt

    @property
    def kind(self) -> str:
        """`encoder-decoder` or `decoder-only`, for the words of reports and model cards."""
        return "encoder-decoder" if self.is_encoder_decoder else "decoder-only"

    @property
    def pipeline_tag(self) -> str:
        """The hub's task name for a model of this role (the model card's metadata)."""
        return "text2text-generation" if self.is_encoder_decoder else "text-generation"

    # ------------------------------------------------------------------ building and loading

    def arch(self, section: ModelSection, source: str = "recipe") -> Arch:
        """The layout `model.arch` names (`auto`: this role's default), checked to play this role."""
        name = self.default_arch if section.arch == "auto" else section.arch
        arch = ARCHS[name]
        if arch.family != self.layouts_of:
            fits = ", ".join(a.name for a in ARCHS.values() if a.family == self.layouts_of)
            raise UserError(
                f"{source}: key 'model.arch': `{name}` builds a `{arch.family}` model, but model.family is `{self.name}`; "
                f"expected auto or one of {fits}"
            )
        return arch

    @property
    def layouts_of(self) -> str:
        """The family whose layouts (models/archs.py) this role builds: its own, but for a prefix LM."""
        return self.name

    def can_start_from(self, found: Role) -> bool:
        """Whether a checkpoint of role `found` may start a model of this role."""
        return found is self

    def mark(self, model) -> None:
        """Record this role in the model's config where its layout alone does not tell it (a prefix
        LM is a causal LM by its model_type), so that `role_of_config` finds it again on reload."""
        config = model.config
        implied = role_of_model_type(
            getattr(config, "model_type", None), bool(getattr(config, "is_encoder_decoder", False))
        )
        if implied is self:
            if hasattr(config, FAMILY_KEY):
                delattr(config, FAMILY_KEY)
        else:
            setattr(config, FAMILY_KEY, self.name)

    def decoding_inputs(self, model, input_ids, attention_mask, num_beams: int) -> dict[str, Any]:
        """Extra `model.generate` inputs this role needs (a prefix LM: its prompt read first)."""
        return {}

    def build(
        self, section: ModelSection, tokenizer: PreTrainedTokenizerFast, source: str = "recipe"
    ) -> PreTrainedModel:
        """A model with random weights in the recipe's layout (`model.arch`) and sizes."""
        model = self.arch(section, source).build(section, tokenizer)
        self.mark(model)
        return model

    def model_class(self):
        import transformers

        return getattr(transformers, self.auto_class)

    def decoder_start_id(self, model, tokenizer) -> int | None:
        return None

    def configure_generation(self, model, tokenizer, context: int) -> None:
        """Save decoding defaults with the model, so plain `model.generate` stops where textgen's does."""
        config = model.generation_config
        config.pad_token_id = tokenizer.pad_token_id
        config.eos_token_id = tokenizer.eos_token_id
        config.bos_token_id = tokenizer.bos_token_id
        config.max_length = context

    # ------------------------------------------------------------------ prompts and decoding

    @abstractmethod
    def prompt_budget(self, context: int, max_new_tokens: int) -> int:
        """Most prompt tokens a prompt may have, so that prompt and reply fit the model's context."""
        ...

    def generation_extras(self, model, tokenizer) -> dict[str, Any]:
        """GenerationConfig values this role adds to the decoding settings."""
        return {}

    def system_prompt(self, recipe: Recipe) -> str:
        """The recipe's system prompt, where this role's prompts carry one."""
        return ""

    @abstractmethod
    def default_prompt_format(self, task: str) -> str: ...

    @abstractmethod
    def wrap_text(self, tokenizer, ids: list[int]) -> list[int]: ...

    @abstractmethod
    def chat_prompt(self, encoder, messages: list[dict[str, str]]) -> list[int]: ...

    @abstractmethod
    def chat_tail(self, encoder) -> list[int]:
        """What follows the last (user) turn in a chat prompt."""
        ...

    @abstractmethod
    def new_tokens(self, sequences, prompt_width: int):
        """The generated part of `model.generate`'s output."""
        ...

    # ------------------------------------------------------------------ objectives

    @abstractmethod
    def finetune_examples(
        self,
        dialogues: list[Dialogue],
        tokenizer,
        loaded: LoadedRecipe,
        context: int,
        count: TruncationCount,
        start_id: int | None = None,
    ): ...

    def pretrain_block_size(self, context: int) -> int:
        return context

    @abstractmethod
    def pretrain_sets(self, train_blocks, val_blocks, tokenizer, model, recipe: Recipe) -> tuple[Any, Any]: ...

    @abstractmethod
    def pretrain_tokens_per_sequence(
        self, context: int, mask_ratio: float, poisson_lambda: float
    ) -> tuple[float, float]: ...

    def needs_mask_token(self, tokenizer) -> bool:
        """Whether pretraining needs a <mask> token the tokenizer lacks."""
        return False

    # ------------------------------------------------------------------ evaluation

    @abstractmethod
    def scoring_pair(self, prompt: list[int], target: list[int], context: int) -> tuple[list[int], list[int]]: ...

    @abstractmethod
    def scoring_set(self, pairs, tokenizer, model): ...

    def prose_unscorable(self) -> str | None:
        """Why plain prose cannot be scored by this role (None: it can)."""
        return None

    # ------------------------------------------------------------------ compute

    @abstractmethod
    def flops_params(self, model, embeddings: set[int]) -> tuple[int, int]:
        """(encoder, decoder) non-embedding parameters."""
        ...

    def encoder_of(self, model):
        """The module that reads the source on its own (None: the one stack reads everything)."""
        return None

    @abstractmethod
    def batch_lengths(self, batch: dict[str, Any]) -> Lengths:
        """What a training batch's compute depends on (flops.Lengths), from its rows, padding left out."""
        ...

    # ------------------------------------------------------------------ the settings table

    @abstractmethod
    def stack(self, layers: int) -> str:
        """The stack in words, for the table of settings as trained (settings_diff.py)."""
        ...

    @abstractmethod
    def source_budget(self, context: int) -> str:
        """Where the source goes and how much of it fits."""
        ...

    def __repr__(self) -> str:
        return f"Role({self.name})"


class EncoderDecoder(Role):
    name = "sora"
    is_encoder_decoder = True
    auto_class = "AutoModelForSeq2SeqLM"
    default_arch = "bart"
    text_prompt = TextPrompt(overhead=2, keep_start=True)
    left_padding = False

    def decoder_start_id(self, model, tokenizer) -> int:
        start = getattr(model.config, "decoder_start_token_id", None)
        return start if start is not None else tokenizer.bos_token_id

    def configure_generation(self, model, tokenizer, context: int) -> None:
        super().configure_generation(model, tokenizer, context)
        model.generation_config.decoder_start_token_id = self.decoder_start_id(model, tokenizer)
        model.generation_config.forced_eos_token_id = None

    def default_prompt_format(self, task: str) -> str:
        return "chat" if task == "dialogue" else "text"

    def prompt_budget(self, context: int, max_new_tokens: int) -> int:
        # the decoder holds the start token and the new tokens; the encoder holds the whole source
        if max_new_tokens > context - 1:
            raise UserError(
                f"generate.max_new_tokens={max_new_tokens} does not fit the model's context of {context} tokens; "
                f"expected at most {context - 1}"
            )
        return context

    def generation_extras(self, model, tokenizer) -> dict[str, Any]:
        return {"decoder_start_token_id": self.decoder_start_id(model, tokenizer)}

    def wrap_text(self, tokenizer, ids: list[int]) -> list[int]:
        head = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
        return [*head, *ids, tokenizer.eos_token_id]

    def chat_prompt(self, encoder, messages):
        return encoder.encode_history(messages)

    def chat_tail(self, encoder) -> list[int]:
        return [encoder.eos]

    def new_tokens(self, sequences, prompt_width: int):
        return sequences[:, 1:]  # after the decoder start token

    def finetune_examples(self, dialogues, tokenizer, loaded, context, count, start_id=None):
        """One (source, target) per assistant turn: the source is the plain text for pairs tasks and
        the role-tagged history for dialogues; the target is the response followed by eos."""
        from textgen_cli.models.chat import chat_encoder
        from textgen_cli.objectives import Seq2SeqExamples, encode_texts, fit_seq2seq

        encoder = chat_encoder(tokenizer)
        recipe = loaded.recipe
        pairs_task = recipe.data.finetune.task == "pairs"
        eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
        examples = []
        for dialogue in dialogues:
            for position, turn in enumerate(dialogue.messages):
                if turn["role"] != "assistant":
                    continue
                history = dialogue.messages[:position]
                if pairs_task:
                    source = self.wrap_text(tokenizer, encode_texts(tokenizer, [history[-1]["content"]])[0])
                else:
                    source = encoder.encode_history(history)
                target = [*encode_texts(tokenizer, [turn["content"]])[0], eos]
                examples.append(
                    fit_seq2seq(
                        source,
                        target,
                        eos,
                        context,
                        "start" if pairs_task else "end",
                        dialogue.id,
                        recipe.data.too_long,
                        count,
                    )
                )
        return Seq2SeqExamples(examples, pad_id=tokenizer.pad_token_id, bos_id=bos if start_id is None else start_id)

    def pretrain_block_size(self, context: int) -> int:
        return context - 2  # bos + noised block + eos must fit the encoder, block + eos the decoder

    def pretrain_sets(self, train_blocks, val_blocks, tokenizer, model, recipe):
        """BART text infilling (spans -> one <mask> each, the decoder rebuilds the block), or T5 span
        corruption when the tokenizer has T5's sentinels (<extra_id_0>, ...)."""
        from textgen_cli.models.infilling import infilling_sets

        return infilling_sets(train_blocks, val_blocks, tokenizer, self.decoder_start_id(model, tokenizer), recipe)

    def needs_mask_token(self, tokenizer) -> bool:
        from textgen_cli.models.infilling import sentinel_ids

        return not sentinel_ids(tokenizer)

    def pretrain_tokens_per_sequence(self, context, mask_ratio, poisson_lambda):
        """bos + the noised block + eos in the encoder (each masked span of mean length ~lambda
        collapses to one <mask>), the block + eos in the decoder."""
        block = context - 2
        encoder = block * (1 - mask_ratio + mask_ratio / max(poisson_lambda, 1.0)) + 2
        return encoder, float(block + 1)

    def scoring_pair(self, prompt, target, context):
        return prompt, target

    def scoring_set(self, pairs, tokenizer, model):
        from textgen_cli.objectives import Seq2SeqExamples

        return Seq2SeqExamples(pairs, pad_id=tokenizer.pad_token_id, bos_id=self.decoder_start_id(model, tokenizer))

    def prose_unscorable(self) -> str | None:
        return "an encoder-decoder model gives no unconditional likelihood of plain prose"

    def flops_params(self, model, embeddings):
        enc = sum(p.numel() for p in model.get_encoder().parameters() if id(p) not in embeddings)
        dec = sum(p.numel() for p in model.get_decoder().parameters() if id(p) not in embeddings)
        return enc, dec

    def encoder_of(self, model):
        return model.get_encoder()

    def batch_lengths(self, batch):
        """Encoder inputs (the attention mask) and decoder targets (the labels), per row."""
        import torch

        from textgen_cli.objectives import IGNORE_INDEX

        inputs = batch["attention_mask"].sum(dim=1).to(torch.float64)
        targets = (batch["labels"] != IGNORE_INDEX).sum(dim=1).to(torch.float64)
        return Lengths(
            float(inputs.sum()),
            float(targets.sum()),
            float((inputs**2).sum()),
            float((targets**2).sum()),
            float((inputs * targets).sum()),
        )

    def stack(self, layers: int) -> str:
        return f"encoder-decoder {layers}+{layers}"

    def source_budget(self, context: int) -> str:
        return f"encoder {context}"


class DecoderOnly(Role):
    name = "chatgpt"
    is_encoder_decoder = False
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
        return DECODER_ONLY.name

    def can_start_from(self, found: Role) -> bool:
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
        import inspect

        import torch

        from textgen_cli.objectives import prefix_lm_mask

        if input_ids.size(1) < 2:
            return {}  # no prefix: the start token alone
        prefix = attention_mask[:, :-1]
        dtype = next(model.parameters()).dtype
        mask = prefix_lm_mask(prefix, prefix.sum(-1), dtype)
        # the positions `generate` gives left-padded rows (their real tokens count from 0)
        positions = (prefix.long().cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            out = model(input_ids=input_ids[:, :-1], attention_mask=mask, position_ids=positions, use_cache=True)
        cache = out.cache if "cache" in out else out.past_key_values  # renamed in transformers 5
        if num_beams > 1:
            cache.batch_repeat_interleave(num_beams)  # generate expands each prompt into its beams
        key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        return {key: cache}

    def stack(self, layers: int) -> str:
        return f"prefix LM {layers}"

    def source_budget(self, context: int) -> str:
        return f"shares {context} with the reply, read both ways"


ENCODER_DECODER = EncoderDecoder()
DECODER_ONLY = DecoderOnly()
PREFIX_LM = PrefixLM()
ROLES = {role.name: role for role in (ENCODER_DECODER, DECODER_ONLY, PREFIX_LM)}


def role_for(family: str | Role) -> Role:
    """The role of a family name (or the role itself)."""
    if isinstance(family, Role):
        return family
    try:
        return ROLES[family]
    except KeyError:
        raise UserError(f"unknown model family `{family}`; expected one of {', '.join(ROLES)}") from None


def role_of_model_type(model_type: str | None, is_encoder_decoder: bool = False) -> Role | None:
    """The role a checkpoint plays, from its config's model_type: what AutoModelForSeq2SeqLM loads is
    encoder-decoder, what AutoModelForCausalLM loads is decoder-only (seq2seq first: BART has both)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    )

    if model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES or is_encoder_decoder:
        return ENCODER_DECODER
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return DECODER_ONLY
    return None


def role_of_config(config) -> Role | None:
    """The role a config was saved with (`Role.mark`), else the one its model_type implies."""
    marked = getattr(config, FAMILY_KEY, None)
    if marked in ROLES:
        return ROLES[marked]
    return role_of_model_type(getattr(config, "model_type", None), bool(getattr(config, "is_encoder_decoder", False)))


def role_of_config_file(config: dict[str, Any]) -> Role | None:
    """The role of a checkpoint from its config.json, read as JSON (no transformers import)."""
    if config.get(FAMILY_KEY) in ROLES:
        return ROLES[config[FAMILY_KEY]]
    return role_of_model_type(config.get("model_type"), bool(config.get("is_encoder_decoder")))


def role_of_model(model) -> Role:
    role = role_of_config(model.config)
    if role is None:
        return ENCODER_DECODER if model.config.is_encoder_decoder else DECODER_ONLY
    return role
