"""The settings the compared arms really ran with, read from the trained models and their runs (not
from recipe keys), and which differences confound the comparison.

Each setting has a kind:
- `family`: what the family itself changes (encoder-decoder or decoder-only stack, layout name,
  parameters, compute and tokens per example, examples a FLOPs budget buys). Shown, never a confound.
- `block`, `prompt`, `data`, `budget`, `optimisation`: must be equal between arms, or be the factor
  the user declared (`compare --factor NAME`); any other difference makes the comparison
  confounded, the report says so at its top, and no lead is starred.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from textgen_cli.comparison.columns import Column, Model

# where the norms sit, by layout (the modules show the norm's type, not its place)
NORM_PLACEMENT = {
    "bart": "post",
    "marian": "post",
    "t5": "pre",
    "mt5": "pre",
    "gpt2": "pre",
    "llama": "pre",
    "qwen2": "pre",
    "mistral": "pre",
    "gemma2": "pre+post",
    "t5gemma": "pre+post",
}
RELATIVE_POSITIONS = ("t5", "mt5", "umt5", "longt5")
HIDDEN_DROPOUT_FIELDS = (
    "dropout",
    "dropout_rate",
    "resid_pdrop",
    "embd_pdrop",
    "hidden_dropout_prob",
    "hidden_dropout",
)
BUDGET_TOLERANCE = 0.05  # FLOPs within 5%, or within one optimizer step, count as the same budget


@dataclass
class Setting:
    name: str
    kind: str
    values: list[str]  # one per arm, formatted

    @property
    def differs(self) -> bool:
        return len(set(self.values)) > 1


def built_model(final_dir):
    """The trained model's architecture with no weights (meta device): what the config builds."""
    import torch
    from transformers import AutoConfig

    from textgen_cli.models import role_of_config

    config = AutoConfig.from_pretrained(final_dir)
    with torch.device("meta"):
        return role_of_config(config).model_class().from_config(config)


def block_settings(model) -> dict[str, str]:
    """Positions, norm, activation and dropout as the built model applies them."""
    import torch

    config = model.config
    sub = getattr(config, "decoder", None) if hasattr(config, "encoder") else None
    inner = sub if sub is not None and not isinstance(sub, dict) else config
    kind = config.model_type
    names = {type(m).__name__ for m in model.modules()}
    has_rope = getattr(inner, "rope_parameters", None) or getattr(inner, "rope_theta", None)
    positions = "relative buckets" if kind in RELATIVE_POSITIONS else ("rotary" if has_rope else "learned absolute")
    norm_type = (
        "RMSNorm"
        if any("RMSNorm" in n for n in names)
        else ("LayerNorm" if any("LayerNorm" in n for n in names) else "?")
    )
    if kind in ("t5", "mt5"):
        norm_type = "RMSNorm"  # T5LayerNorm is an RMS norm without mean subtraction
    gated = any(name in ("gate_proj", "wi_0", "w1") for name, _ in _leaf_names(model))
    act = (
        getattr(inner, "hidden_activation", None)
        or getattr(inner, "hidden_act", None)
        or getattr(inner, "activation_function", None)
        or getattr(inner, "dense_act_fn", None)
        or "?"
    )
    act = {"gelu_pytorch_tanh": "gelu", "gelu_new": "gelu", "silu": "swish"}.get(act, act)
    activation = {"gelu": "GeGLU", "swish": "SwiGLU"}.get(act, f"{act} GLU") if gated else act.upper()
    # dropout modules, or the config fields of layouts that call dropout as a function (BART)
    configured = [getattr(inner, name, None) for name in HIDDEN_DROPOUT_FIELDS]
    hidden_dropout = max(
        [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
        + [float(v) for v in configured if isinstance(v, (int, float))],
        default=0.0,
    )
    attention_dropout = float(getattr(inner, "attention_dropout", None) or getattr(inner, "attn_pdrop", None) or 0.0)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    return {
        "positions": positions,
        "norm": f"{NORM_PLACEMENT.get(kind, '?')}-{norm_type}",
        "activation": activation,
        "hidden dropout": f"{hidden_dropout:g}",
        "attention dropout": f"{attention_dropout:g}",
        "width / heads / ffn": f"{model.get_input_embeddings().embedding_dim} / "
        f"{getattr(inner, 'num_attention_heads', None) or getattr(inner, 'num_heads', None) or getattr(inner, 'n_head', '?')} / "
        f"{getattr(inner, 'intermediate_size', None) or getattr(inner, 'd_ff', None) or getattr(inner, 'encoder_ffn_dim', None) or getattr(inner, 'n_inner', None) or '?'}",
        "tied output embeddings": "yes" if tied else "no",
    }


def _leaf_names(model):
    for name, module in model.named_modules():
        yield name.rsplit(".", 1)[-1], module


def parameter_counts(model) -> tuple[int, int]:
    """(total, without embeddings): `parameters()` yields a tied tensor once."""
    import torch

    total = sum(p.numel() for p in model.parameters())
    embeddings = {
        id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters(recurse=False)
    }
    return total, total - sum(p.numel() for p in model.parameters() if id(p) in embeddings)


def arm_settings(model: Model) -> dict[str, tuple[str, str]]:
    """name -> (kind, formatted value) for one trained model."""
    from textgen_cli.models import role_for

    built = built_model(model.final_dir)
    recipe = model.loaded.recipe
    role = role_for(recipe.model.family)
    summary = model.summaries[-1]
    examples = sum(s.steps * s.global_batch for s in model.summaries)
    flops = sum(s.flops for s in model.summaries)
    tokens = sum(s.tokens for s in model.summaries)
    total, non_embedding = parameter_counts(built)
    depth = role.stack(recipe.model.layers)
    section = getattr(recipe, "finetune", None)
    lr = getattr(section, "lr", None) or recipe.train.lr
    schedule = (
        f"constant after {recipe.train.warmup_steps} warmup steps"
        if recipe.train.min_lr_ratio == 1.0
        else f"cosine to {recipe.train.min_lr_ratio:g} x peak after {recipe.train.warmup_steps} warmup steps"
    )
    out: dict[str, tuple[str, str]] = {
        "stack": ("family", depth),
        "layout": ("family", built.config.model_type),
        "parameters": ("family", f"{total:,}"),
        "parameters without embeddings": ("family", f"{non_embedding:,}"),
        "FLOPs per example": ("family", f"{flops / max(examples, 1):.3g}"),
        "tokens per example": ("family", f"{tokens / max(examples, 1):.1f}"),
        "examples seen": ("family", f"{examples:,}"),
        "training FLOPs": ("budget", f"{flops:.3g}"),
    }
    out.update({name: ("block", value) for name, value in block_settings(built).items()})
    out.update(
        {
            "context": ("block", f"{recipe.model.context}"),
            "tokenizer vocabulary": ("block", f"{built.get_input_embeddings().num_embeddings:,}"),
            "system prompt": ("prompt", repr(role.system_prompt(recipe)) if role.system_prompt(recipe) else "none"),
            "source budget": ("family", role.source_budget(recipe.model.context)),
            "training data": ("data", str(recipe.data.finetune.train)),
            "learning rate": ("optimisation", f"{lr:g}"),
            "schedule": ("optimisation", schedule),
            "batch": ("optimisation", f"{summary.global_batch}"),
            "weight decay": ("optimisation", f"{recipe.train.weight_decay:g}"),
            "stages": ("data", " + ".join(s.stage for s in model.summaries)),
        }
    )
    return out


def effective_settings(columns: list[Column]) -> list[Setting]:
    """Every setting of every model column (its first seed), in one order."""
    arms = [arm_settings(c.models[0]) for c in columns if not c.baseline and c.models]
    names = list(arms[0]) if arms else []
    return [Setting(name, arms[0][name][0], [arm.get(name, ("", "?"))[1] for arm in arms]) for name in names]


def confounds(settings: list[Setting], declared: tuple[str, ...] = ()) -> list[str]:
    """The differences beyond the family and the declared factors, as `name: a vs b` lines."""
    out = []
    by_name = {s.name: s for s in settings}
    for s in settings:
        if s.kind == "family" or not s.differs or s.name in declared:
            continue
        if s.kind == "budget" and _within(s.values, max(BUDGET_TOLERANCE, _one_step(by_name))):
            continue
        out.append(f"{s.name} {' vs '.join(s.values)}")
    return out


def _one_step(by_name: dict[str, Setting]) -> float:
    """The largest share of an arm's training FLOPs that one optimizer step is: whole steps cannot
    match a budget closer than that."""
    try:
        per_example = [float(v) for v in by_name["FLOPs per example"].values]
        batch = [float(v) for v in by_name["batch"].values]
        total = [float(v) for v in by_name["training FLOPs"].values]
    except (KeyError, ValueError):
        return 0.0
    return max(f * b / max(t, 1.0) for f, b, t in zip(per_example, batch, total))


def _within(values: list[str], tolerance: float) -> bool:
    numbers = [float(v) for v in values]
    return max(numbers) <= min(numbers) * (1 + tolerance)
