"""What a family is: the `Role` every family implements (objective, prompt layout, decoding,
scoring, FLOPs, the settings table). The roles themselves and the table of them are in roles.py."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from textgen_cli.core.errors import UserError
from textgen_cli.models.archs import ARCHS, Arch
from textgen_cli.models.flops import Lengths

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

    from textgen_cli.core.loaded_recipe import LoadedRecipe
    from textgen_cli.core.schema import ModelSection, Recipe
    from textgen_cli.data.readers import Dialogue
    from textgen_cli.objectives import TruncationCount


# The config key that tells a saved prefix LM from a plain decoder-only model of the same layout.
FAMILY_KEY = "textgen_family"


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
    # a label is the next position's input (causal LM: logits[:, :-1] against labels[:, 1:]); False:
    # labels line up with the decoder's outputs (encoder-decoder). Every loss of the role's examples
    # (training, validation, scoring) is computed this way.
    shifted_labels: bool
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
        from textgen_cli.models.roles import role_of_model_type

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

    def prompt_cache(self, model, input_ids, attention_mask):
        """The key/value cache of each left-padded prompt but its last token, read as decoding reads
        it, for `model.generate` to go on from (and references to be scored after it); None where
        the role's decoding does not start from such a cache (an encoder-decoder)."""
        return None

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
