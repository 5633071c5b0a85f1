"""Model families. Adding a family means one builder module and one entry in FAMILIES."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from textgen_cli.errors import UserError
from textgen_cli.models.chatgpt import build_chatgpt
from textgen_cli.models.sora import build_sora

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable
    is_encoder_decoder: bool
    auto_class: str  # the transformers Auto class that reloads a saved model of this family


FAMILIES = {
    "sora": Family("sora", build_sora, is_encoder_decoder=True, auto_class="AutoModelForSeq2SeqLM"),
    "chatgpt": Family("chatgpt", build_chatgpt, is_encoder_decoder=False, auto_class="AutoModelForCausalLM"),
}


def family_of_checkpoint(path: Path) -> str:
    """Which family a saved checkpoint belongs to, read from its config.json."""
    import json

    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"checkpoint '{path}': no config.json; expected a directory written by save_pretrained")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{config_file}: not valid JSON ({exc})") from exc
    return "sora" if config.get("is_encoder_decoder") else "chatgpt"


def init_from_dir(loaded) -> Path:
    """`model.init_from`, checked to be a directory, with the key named if it is not."""
    path = Path(loaded.recipe.model.init_from)
    if not path.is_dir():
        raise UserError(f"{loaded.path}: key 'model.init_from': checkpoint directory '{path}' does not exist")
    return path


def load_checkpoint(path: Path, family: str, vocab_size: int | None = None) -> "PreTrainedModel":
    """Load a local checkpoint of `family`, with clear errors for every way it can be wrong."""
    import transformers

    if not path.is_dir():
        raise UserError(f"checkpoint directory '{path}' does not exist")
    found = family_of_checkpoint(path)
    if found != family:
        raise UserError(f"checkpoint '{path}' is a `{found}` model, but the recipe's model.family is `{family}`")
    if not list(path.glob("*.safetensors")):
        raise UserError(f"checkpoint '{path}': no .safetensors weights (textgen loads weights only from safetensors)")
    auto = getattr(transformers, FAMILIES[family].auto_class)
    try:
        model = auto.from_pretrained(str(path), local_files_only=True, use_safetensors=True, trust_remote_code=False)
    except Exception as exc:  # safetensors and transformers raise many types for a damaged file
        raise UserError(f"checkpoint '{path}': cannot load the weights: {str(exc).splitlines()[0]}") from exc
    if vocab_size is not None and model.get_input_embeddings().weight.shape[0] != vocab_size:
        raise UserError(
            f"checkpoint '{path}': the model has {model.get_input_embeddings().weight.shape[0]} token embeddings "
            f"but its tokenizer has {vocab_size} tokens; expected a tokenizer saved with this model"
        )
    return model


def transformer_blocks(model) -> list:
    """The model's repeated layers (GPT-2 blocks; BART encoder and decoder layers): the units that
    FSDP shards and `train.compile` compiles, named by transformers' `_no_split_modules`."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [module for module in model.modules() if type(module).__name__ in names]
