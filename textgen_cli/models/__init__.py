"""Models: the roles (families), the layouts built from scratch, and loading pretrained checkpoints.

- roles.py: `sora` (encoder-decoder), `chatgpt` (decoder-only) and `prefix-lm` (decoder-only, its
  prompt read both ways), and everything that differs between them. A role is found by its family
  name (`role_for`) or from a model (`role_of_model`); ROLES is the table.
- archs.py: the layouts `model.arch` builds from scratch (bart, t5, t5gemma; gpt2, llama, qwen2, gemma2).
- loading.py: `model.init_from` (a local directory, a hub id or a GGUF file) and the tokenizer adaptation.
- gguf.py: GGUF files (llama.cpp, Ollama) read through transformers, rebuilt as plain models.
- chat.py: textgen's chat template or the tokenizer's own; lora.py: LoRA through peft.
"""

from __future__ import annotations

from pathlib import Path

from textgen_cli.core.errors import UserError
from textgen_cli.models.archs import ARCHS
from textgen_cli.models.gguf import gguf_file_of
from textgen_cli.models.loading import (
    SCRATCH,
    Pretrained,
    context_of,
    family_of_checkpoint,
    is_hub_id,
    load_checkpoint,
    load_pretrained,
    resolve_init_from,
)
from textgen_cli.models.role import Role
from textgen_cli.models.roles import DECODER_ONLY, ENCODER_DECODER, ROLES, role_for, role_of_config, role_of_model

__all__ = [
    "ARCHS",
    "DECODER_ONLY",
    "ENCODER_DECODER",
    "ROLES",
    "SCRATCH",
    "Pretrained",
    "Role",
    "context_of",
    "family_of_checkpoint",
    "init_from",
    "is_hub_id",
    "load_checkpoint",
    "load_pretrained",
    "resolve_init_from",
    "role_for",
    "role_of_config",
    "role_of_model",
    "transformer_blocks",
]


def init_from(loaded) -> str:
    """`model.init_from`: `scratch`, a hub id, a local directory or a .gguf file (checked to exist,
    the key named if not)."""
    value = loaded.recipe.model.init_from
    if value == SCRATCH or is_hub_id(value):
        return value
    path = Path(value)
    if not path.exists():
        raise UserError(f"{loaded.path}: key 'model.init_from': checkpoint directory '{value}' does not exist")
    if path.is_file() and gguf_file_of(path) is None:
        raise UserError(
            f"{loaded.path}: key 'model.init_from': '{value}' is a file; expected a save_pretrained directory or a .gguf file"
        )
    return value


def transformer_blocks(model) -> list:
    """The model's repeated layers (GPT-2 blocks; BART encoder and decoder layers): the units that
    FSDP shards and `train.compile` compiles, named by transformers' `_no_split_modules`."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [module for module in model.modules() if type(module).__name__ in names]
