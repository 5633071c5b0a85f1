"""Loading a model to start from: a local `save_pretrained` directory, a GGUF file (gguf.py) or a
Hugging Face hub id.

Everything goes through transformers' own `from_pretrained` (and so its cache, `HF_HOME`). The role
(`sora` / `chatgpt`) follows the checkpoint's config. The checkpoint's own tokenizer is kept; only
the special tokens textgen needs and it lacks are added (tokenizer.adapt_tokenizer), and the
embeddings grow to match, each new row set to the mean of the existing rows.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textgen_cli.core.errors import UserError
from textgen_cli.models.gguf import check_dequantizable, gguf_file_of, plain_model
from textgen_cli.models.role import Role
from textgen_cli.models.roles import role_for, role_of_config, role_of_config_file

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

SCRATCH = "scratch"  # model.init_from: random weights built from the recipe's model section
# owner/name (or a bare legacy name such as `gpt2`): letters, digits, '.', '_' and '-'
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
CONTEXT_FIELDS = ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length", "seq_length")


def looks_like_hub_id(value: str) -> bool:
    return bool(_HUB_ID.match(value)) and not value.startswith(".") and ".." not in value


def resolve_init_from(value: str, root: Path) -> str:
    """`model.init_from` as the recipe stores it: `scratch` stays; a path that exists (relative to
    `root`) becomes absolute; a hub id with no such local folder stays a hub id; anything else
    becomes an absolute path (and is reported missing when a stage needs it)."""
    if value == SCRATCH:
        return value
    path = root / Path(value).expanduser()
    if not path.exists() and looks_like_hub_id(value):
        return value
    return str(path.resolve())


def is_hub_id(ref: str | Path) -> bool:
    text = str(ref)
    return not Path(text).exists() and not Path(text).is_absolute() and looks_like_hub_id(text)


def context_of(config) -> int | None:
    """The context length the architecture records (GPT-2 n_positions, BART / Llama
    max_position_embeddings, ...); None where it has none (T5's relative positions)."""
    for name in CONTEXT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE") or os.environ.get(
        "TRANSFORMERS_OFFLINE", ""
    ).upper() in ("1", "ON", "YES", "TRUE")


def unreachable_message(ref: str) -> str:
    why = "the hub is switched off (HF_HUB_OFFLINE=1)" if hub_offline() else "the hub cannot be reached"
    return (
        f"model '{ref}' is not a local directory and not in the Hugging Face cache, and {why}; "
        f"fetch it into the cache beforehand, with network access: `hf download {ref}` "
        f"(older huggingface_hub: `huggingface-cli download {ref}`), or give model.init_from a local directory"
    )


def _from(ref: str, hub: bool, what: str, load: Callable[[], Any]) -> Any:
    """Run a transformers load, turning its errors into one clear line."""
    try:
        return load()
    except Exception as exc:  # transformers, hub and safetensors raise many types
        text = str(exc)
        if hub and (hub_offline() or "connect" in text.lower() or "offline" in text.lower() or "cached files" in text):
            raise UserError(unreachable_message(ref)) from exc
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise UserError(f"checkpoint '{ref}': cannot load the {what}: {first}") from exc


@dataclass
class Pretrained:
    """A model and tokenizer ready to train or decode, and what was done to fit them to textgen."""

    model: Any
    tokenizer: Any
    role: Role
    source: str
    added_tokens: list[str] = field(default_factory=list)  # added by textgen (tokenizer.adapt_tokenizer)
    # brought by the tokenizer beyond the model's embedding rows (see tokens_beyond_rows): given rows too
    tokens_beyond_rows: list[str] = field(default_factory=list)

    def adaptation(self, stage: str) -> list[str]:
        """What was done to fit the checkpoint to textgen, as log lines (none when nothing was)."""
        lines = []
        if self.tokens_beyond_rows:
            lines.append(
                f"{stage}: the tokenizer of {self.source} loads with {len(self.tokens_beyond_rows)} token(s) the model has no "
                f"embedding row for: {', '.join(self.tokens_beyond_rows)} (rows added: the mean of the others)"
            )
        if self.added_tokens:
            lines.append(
                f"{stage}: added to the tokenizer of {self.source}: {', '.join(self.added_tokens)} (embedding rows: the mean of the others)"
            )
        return lines


def family_of_checkpoint(path: Path) -> str:
    """Which family (role) a saved checkpoint plays, read from its config.json (a GGUF file: from
    the config transformers reads from its metadata)."""
    import json

    gguf = gguf_file_of(path)
    if gguf is not None:
        from transformers import AutoConfig

        check_dequantizable(gguf)
        config = _from(
            str(path),
            False,
            "config",
            lambda: AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True),
        )
        role = role_of_config(config)
        if role is None:
            raise UserError(_unsupported(path, config.model_type))
        return role.name

    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"checkpoint '{path}': no config.json; expected a directory written by save_pretrained")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{config_file}: not valid JSON ({exc})") from exc
    role = role_of_config_file(config)
    if role is None:
        raise UserError(_unsupported(path, config.get("model_type")))
    return role.name


def _unsupported(ref: Any, model_type: Any) -> str:
    return (
        f"checkpoint '{ref}': a `{model_type}` model is neither an encoder-decoder (AutoModelForSeq2SeqLM: plays `sora`) "
        f"nor a decoder-only LM (AutoModelForCausalLM: plays `chatgpt`)"
    )


def load_pretrained(
    ref: str | Path, family: str | Role, *, needs_mask: bool = False, context: int | None = None
) -> Pretrained:
    """Load a local directory or a hub id for `family`'s role, with the tokenizer adapted.

    `needs_mask`: pretraining an encoder-decoder whose tokenizer has no T5 sentinels needs <mask>.
    `context`: recorded as the model's context when its config has no such field (T5)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from textgen_cli.data.tokenizer import adapt_tokenizer, is_textgen_tokenizer

    role = role_for(family)
    text = str(ref)
    hub = is_hub_id(text)
    local = Path(text)
    gguf = None if hub else gguf_file_of(local)
    # what from_pretrained is given: a hub id, a save_pretrained folder, or a GGUF file's folder and name
    source, options = text, {} if hub else {"local_files_only": True}
    if gguf is not None:
        check_dequantizable(gguf)
        source, options = str(gguf.parent), {"local_files_only": True, "gguf_file": gguf.name}
    elif not hub:
        if not local.exists():
            raise UserError(f"checkpoint directory '{text}' does not exist")
        if not local.is_dir() or not (local / "config.json").is_file():
            raise UserError(
                f"checkpoint '{text}': no config.json; expected a directory written by save_pretrained, or a .gguf file"
            )
    config = _from(text, hub, "config", lambda: AutoConfig.from_pretrained(source, trust_remote_code=False, **options))
    found = role_of_config(config)
    if found is None:
        raise UserError(_unsupported(text, config.model_type))
    if not role.can_start_from(found):
        raise UserError(
            f"checkpoint '{text}' is a `{found.name}` model, but the recipe's model.family is `{role.name}` "
            f"(a `{config.model_type}` model loads with {found.auto_class}: it plays `{found.name}`)"
        )
    if not hub and gguf is None and not list(local.glob("*.safetensors")):
        raise UserError(f"checkpoint '{text}': no .safetensors weights (textgen loads weights only from safetensors)")
    tokenizer = _from(text, hub, "tokenizer", lambda: AutoTokenizer.from_pretrained(source, **options))
    # safetensors only, from the hub too: a pickled checkpoint can run code when it is loaded (a GGUF
    # file holds tensors and metadata only)
    weights_options = {**options, "use_safetensors": True} if gguf is None else options
    model = _from(
        text,
        hub,
        "weights",
        lambda: role.model_class().from_pretrained(
            source, config=config, dtype=torch.float32, trust_remote_code=False, **weights_options
        ),
    )
    if gguf is not None:
        model = plain_model(model, role)  # saveable: final/ is then a plain safetensors checkpoint
    role.mark(model)  # a causal LM started as a prefix LM is saved as one
    rows = model.get_input_embeddings().weight.shape[0]
    # textgen saves a model with exactly its tokenizer's rows; other checkpoints may pad their
    # vocabulary (Qwen2.5: more rows than tokens, kept as they are)
    beyond = tokens_beyond_rows(tokenizer, rows)
    if (is_textgen_tokenizer(tokenizer) and rows != len(tokenizer)) or beyond is None:
        raise UserError(
            f"checkpoint '{text}': the model has {rows} token embeddings but its tokenizer has {len(tokenizer)} tokens; "
            "expected a tokenizer saved with this model"
        )
    added = adapt_tokenizer(tokenizer, needs_mask=needs_mask and role.needs_mask_token(tokenizer))
    if added or beyond:
        grow_embeddings(model, tokenizer, beyond + added)
    if context_of(model.config) is None and context:
        model.config.n_positions = context  # saved with the model, so it is read back the same way
    return Pretrained(model, tokenizer, role, text, added, beyond)


def tokens_beyond_rows(tokenizer, rows: int) -> list[str] | None:
    """The tokens whose ids are past the model's `rows` embeddings, when all of them are added tokens:
    a tokenizer class may add defaults as it loads (transformers 5 loads a plain tokenizer saved
    beside a `qwen2` model as Qwen2Tokenizer, which adds an `<|endoftext|>` pad), and those get rows.
    None when the base vocabulary itself is larger than the embeddings: the tokenizer of another model."""
    if len(tokenizer) <= rows:
        return []
    added = tokenizer.added_tokens_decoder
    if any(index not in added for index in range(rows, len(tokenizer))):
        return None
    return [str(added[index]) for index in range(rows, len(tokenizer))]


def grow_embeddings(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, added: list[str]) -> None:
    """Rows for the added tokens: the embeddings (and an untied output layer) grow to the tokenizer's
    size where needed, and each added token's row is the mean of the rows that were there."""
    import torch

    new_ids = [tokenizer.convert_tokens_to_ids(token) for token in added]
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        layers = [model.get_input_embeddings().weight]
        output = model.get_output_embeddings()
        if output is not None and output.weight is not layers[0]:
            layers.append(output.weight)
        for weight in layers:
            old = torch.ones(weight.shape[0], dtype=torch.bool)
            old[rows:] = False
            old[new_ids] = False
            weight[new_ids] = weight[old].mean(dim=0)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, name)
        if getattr(model.config, name, None) is None and value is not None:
            setattr(model.config, name, value)
    model.config.pad_token_id = tokenizer.pad_token_id


def load_checkpoint(path: Path, family: str | Role, vocab_size: int | None = None) -> PreTrainedModel:
    """Load a local checkpoint of `family` whose tokenizer is already complete (textgen's own
    output), with clear errors for every way it can be wrong."""
    import transformers

    role = role_for(family)
    if not path.is_dir():
        raise UserError(f"checkpoint directory '{path}' does not exist")
    found = family_of_checkpoint(path)
    if found != role.name:
        raise UserError(f"checkpoint '{path}' is a `{found}` model, but the recipe's model.family is `{role.name}`")
    if not list(path.glob("*.safetensors")):
        raise UserError(f"checkpoint '{path}': no .safetensors weights (textgen loads weights only from safetensors)")
    auto = getattr(transformers, role.auto_class)
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
