"""LoRA through peft: low-rank adapters on the attention and feed-forward projections.

The adapters are injected into the transformers model itself (peft replaces the target Linear
layers in place), and the training loop trains that model as it trains any other: only the
adapter weights require gradients, so AdamW holds state for them alone. Tokens that textgen added
to the tokenizer get trainable rows too (peft's trainable tokens: a delta for those rows alone),
or they would stay the mean row they started as. At the end the adapters are merged into the
weights (`final/` is a plain transformers checkpoint); `model.lora.keep_adapter` also saves the
adapter alone in `final/adapter/`.

What LoRA saves on a CPU, measured on SmolLM2-135M (docs/models.md, "LoRA"): the gradients and
AdamW state of the frozen weights, and the weight-gradient products of the frozen projections.
Adapter dropout is off by default: peft draws a separate mask and keeps a separate dropped copy of
the input for each of the seven adapters of a layer, which took 11% of a LoRA step and a GB of
allocations.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textgen_cli.core.errors import UserError
from textgen_cli.models.archs import ARCHS, PROJECTIONS

if TYPE_CHECKING:
    from textgen_cli.core.schema import LoraSection

# Pretrained model types textgen has no layout for, with every attention and feed-forward
# projection (a layout's own are on its ARCHS entry); anything else falls back to peft's table.
PRETRAINED_TARGETS = {
    "mistral": PROJECTIONS,
    "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
}

# the attribute of a model with adapters that holds its peft wrapper until it is merged for saving
# (on the model itself: a registry keyed by id() could hand a new model an old one's wrapper)
WRAPPER_ATTRIBUTE = "_textgen_lora"


def target_modules(model, section: LoraSection, source: str) -> list[str]:
    if section.target_modules:
        return list(section.target_modules)
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = model.config.model_type
    layout = ARCHS.get(model_type)
    found = (
        (layout.lora_targets if layout else None)
        or PRETRAINED_TARGETS.get(model_type)
        or TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    )
    if not found:
        raise UserError(
            f"{source}: key 'model.lora.target_modules': textgen has no default for a `{model_type}` model; name its projection modules, e.g. [q_proj, v_proj]"
        )
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return [name for name in found if name in names]


def module_name(model, module) -> str | None:
    """The name under which `module` sits in `model` (None: not in it)."""
    return next((name for name, found in model.named_modules() if found is module), None)


def token_rows(model, token_ids: list[int]) -> dict[str, list[int]] | None:
    """peft's `trainable_token_indices`: the rows of `token_ids` in the input embeddings and, when
    it is not tied to them, in the output layer (a new token must also be predictable)."""
    if not token_ids:
        return None
    embeddings, output = model.get_input_embeddings(), model.get_output_embeddings()
    rows = {module_name(model, embeddings): list(token_ids)}
    if output is not None and output.weight is not embeddings.weight:
        rows[module_name(model, output)] = list(token_ids)
    return {name.rsplit(".", 1)[-1]: ids for name, ids in rows.items() if name}


def attach_lora(
    model,
    section: LoraSection,
    source: str = "recipe",
    *,
    new_tokens: list[int] | None = None,
    input_grads: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Inject LoRA adapters; returns the (same) transformers model, now training only the adapters
    (and the rows of `new_tokens`: ids textgen added to the tokenizer), and what the summary
    records: rank, alpha, targets, trainable and total parameters.

    `input_grads`: the input embeddings' output gets a gradient although the embeddings are frozen
    (adversarial training perturbs it); otherwise backpropagation stops below the first layer's
    adapters, as it should."""
    from peft import LoraConfig, get_peft_model

    targets = target_modules(model, section, source)
    alpha = section.alpha if section.alpha is not None else 2.0 * section.rank
    config = LoraConfig(
        r=section.rank,
        lora_alpha=alpha,
        lora_dropout=section.dropout,
        target_modules=targets,
        fan_in_fan_out=model.config.model_type == "gpt2",  # GPT-2's Conv1D stores weights transposed
        trainable_token_indices=token_rows(model, list(new_tokens or [])),
    )
    try:
        with warnings.catch_warnings():  # peft asks transformers 5 by names it has deprecated
            warnings.simplefilter("ignore", FutureWarning)
            wrapper = get_peft_model(model, config)
    except ValueError as exc:
        raise UserError(f"{source}: key 'model.lora.target_modules': {str(exc).splitlines()[0]}") from exc
    inner = wrapper.base_model.model
    if input_grads:
        inner.enable_input_require_grads()
    object.__setattr__(inner, WRAPPER_ATTRIBUTE, (wrapper, section.keep_adapter))  # not a submodule
    trainable = sum(p.numel() for p in inner.parameters() if p.requires_grad)
    total = sum(p.numel() for p in inner.parameters())
    notes = {
        "rank": section.rank,
        "alpha": alpha,
        "dropout": section.dropout,
        "target_modules": targets,
        "trainable_tokens": len(new_tokens or []),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_share": trainable / total,
    }
    return inner, notes


def merged_for_saving(model, final_dir: Path, save: bool = True):
    """The model to save: with LoRA, the adapters merged into the weights (and, with keep_adapter,
    the adapter saved alone in final_dir/adapter first); any other model as it is."""
    entry = getattr(model, WRAPPER_ATTRIBUTE, None)
    if entry is None:
        return model
    object.__delattr__(model, WRAPPER_ATTRIBUTE)
    wrapper, keep_adapter = entry
    if keep_adapter and save:
        with warnings.catch_warnings():  # it says it saves the resized embeddings too: what "auto" is for
            warnings.simplefilter("ignore", UserWarning)
            wrapper.save_pretrained(str(final_dir / "adapter"), save_embedding_layers="auto")
    return wrapper.merge_and_unload()
