"""The roles a model can play (the families), one entry each in ROLES, and how a role is looked up.

- `sora` is played by encoder-decoder models (whatever AutoModelForSeq2SeqLM loads: BART, T5,
  mBART, Pegasus, Marian, ...): source -> target, pretrained by text infilling.
- `chatgpt` is played by decoder-only models (whatever AutoModelForCausalLM loads: GPT-2, Llama,
  Qwen2, Mistral, GPT-NeoX, Phi, ...): chat sequences with assistant-only loss, pretrained as a
  causal LM.

The rest of textgen asks the role (objective, prompt encoding, system prompt, decoding layout,
likelihood scoring, FLOPs, the class that reloads a checkpoint, the pretraining objective) and never
tests a family name. The role of a checkpoint follows its config (`role_of_config`), not its name.
What a role must say is `role.py`; the roles are `encoder_decoder.py` and `decoder_only.py`.
"""

from __future__ import annotations

from typing import Any

from textgen_cli.core.errors import UserError
from textgen_cli.models.decoder_only import DecoderOnly, PrefixLM
from textgen_cli.models.encoder_decoder import EncoderDecoder
from textgen_cli.models.role import FAMILY_KEY, Role

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
