"""`textgen generate`'s model: a loaded checkpoint with what it takes to prompt it the way it was
trained (prompt format, system prompt, decoding settings).

The rest of generation lives by job: prompts.py (building prompts), decoding.py (batched and
streamed decoding), batch_io.py (batch mode's files), chat_session.py (the chat loop); finding a
recipe's trained model is runs.trained_model, its recipe recipe.load_generate_recipe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textgen_cli.core.errors import UserError
from textgen_cli.core.files import checkpoint_stage, trained_model
from textgen_cli.core.schema import STAGES, GenerateSection, Recipe
from textgen_cli.generation.decoding import (
    GenerationResult,
    GenerationStats,
    generate_batch,
    generate_stream,
    settings_dict,
)
from textgen_cli.generation.prompts import Prompt, PromptInput, build_prompt, prompt_budget, prompt_format
from textgen_cli.models import Role, family_of_checkpoint, load_pretrained, role_for
from textgen_cli.recipe import LoadedRecipe, load_generate_recipe


@dataclass(kw_only=True)
class Generator:
    """A loaded model with everything needed to prompt it the way it was trained."""

    model: Any
    tokenizer: Any
    family: str  # the role the model plays: `sora` or `chatgpt`
    fmt: str  # `chat` or `text`
    task: str
    system: str  # the recipe's system prompt (applied to `chatgpt` chats)
    settings: GenerateSection
    path: Path
    stage: str | None

    @classmethod
    def from_recipe(
        cls,
        model,
        tokenizer,
        recipe: Recipe,
        *,
        family: str,
        stage: str | None,
        path: Path,
        settings: GenerateSection | None = None,
    ) -> Generator:
        """Prompted as `stage` of `recipe` trained it: its prompt format, system prompt and task
        (`settings`: other decoding settings than the recipe's)."""
        role = role_for(family)
        task = recipe.data.finetune.task
        return cls(
            model=model,
            tokenizer=tokenizer,
            family=role.name,
            fmt=prompt_format(role, task, stage, recipe.generate.prompt_format),
            task=task,
            system=role.system_prompt(recipe),
            settings=recipe.generate if settings is None else settings,
            path=path,
            stage=stage,
        )

    @property
    def role(self) -> Role:
        return role_for(self.family)

    @property
    def budget(self) -> int:
        """Most prompt tokens, so that prompt and reply fit the model's context."""
        return prompt_budget(self.model, self.settings)

    @property
    def max_new_tokens(self) -> int:
        return self.settings.max_new_tokens

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    def decoding_settings(self) -> dict[str, Any]:
        """The decoding settings as plain JSON values, as recorded beside every output."""
        return settings_dict(self.settings)

    def prompt(self, item: PromptInput, system: str | None = None, where: str = "prompt") -> Prompt:
        return build_prompt(
            self.tokenizer,
            item,
            self.family,
            self.fmt,
            self.budget,
            self.system if system is None else system,
            self.settings.too_long,
            where,
        )

    def batch(
        self,
        inputs: Sequence[PromptInput],
        stats: GenerationStats | None = None,
        on_batch=None,
        labels: Sequence[str] | None = None,
        on_prompts=None,
    ) -> list[GenerationResult]:
        return generate_batch(
            self.model,
            self.tokenizer,
            inputs,
            self.settings,
            self.family,
            self.task,
            self.settings.batch_size,
            system=self.system,
            fmt=self.fmt,
            stats=stats,
            on_batch=on_batch,
            labels=labels,
            on_prompts=on_prompts,
        )

    def stream(
        self, prompt: Prompt, write: Callable[[str], None], stats: GenerationStats | None = None, seed_offset: int = 0
    ) -> GenerationResult:
        """Decode one prompt, handing its text to `write` as it grows. Sampling uses the seed
        `generate.seed + seed_offset` (a chat's n-th reply uses n: replies differ, a session replays)."""
        settings = (
            dataclasses.replace(self.settings, seed=self.settings.seed + seed_offset) if seed_offset else self.settings
        )
        return generate_stream(self.model, self.tokenizer, prompt, settings, write, stats)


def choose_device(name: str):
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("generate.device=cuda but no CUDA device is available; use generate.device=auto or cpu")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def load_generator(
    recipe: str | None,
    model_dir: str | None,
    stage: str | None = None,
    overrides: list[str] | None = None,
    loaded: LoadedRecipe | None = None,
) -> Generator:
    """Load the model to generate from, with the settings and prompt format it needs
    (`loaded`: the result of `load_generate_recipe` for the same arguments, if already at hand)."""
    overrides = list(overrides or [])
    if stage is not None and stage not in STAGES:
        raise UserError(f"--stage {stage}: expected one of {', '.join(STAGES)}")
    if model_dir is not None and stage is not None:
        raise UserError("--stage picks one of the recipe's trained models; it cannot be combined with --model")
    # the recipe is validated as it loads, `generate:` settings included (GenerateSection.check)
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
    device = choose_device(r.generate.device)
    _quiet_transformers()
    # any save_pretrained checkpoint: its tokenizer gets what textgen needs (nothing, for textgen's own)
    pretrained = load_pretrained(path, family, context=r.model.context)
    model, tokenizer = pretrained.model, pretrained.tokenizer
    model.to(device).eval()
    return Generator.from_recipe(model, tokenizer, r, family=family, stage=found_stage, path=path)


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
