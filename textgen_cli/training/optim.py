"""The optimizer and its schedule: AdamW over its parameter groups, linear warmup then cosine decay
to `train.min_lr_ratio` of the peak (1.0: a constant rate after warmup)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from textgen_cli.core.schema import TrainSection


def param_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only: biases, norms and (tied) embeddings' 1-D params are left alone."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model, weight_decay: float, lr: float, device_type: str):
    """AdamW (betas 0.9/0.95) over `param_groups`, with its fastest implementation for the device.

    Left alone, torch runs AdamW as a per-parameter Python loop on CPU (foreach is its default only
    on CUDA). The fused kernel (one pass over every parameter) exists on CPU and CUDA; on CPU its
    `optimizer.step()` measured 3x faster than the loop or foreach (docs/performance.md)."""
    import torch

    kernel = {"fused": True} if device_type in ("cpu", "cuda") else {"foreach": True}
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.95), eps=1e-8, **kernel)


def build_schedule(optimizer, section: TrainSection, steps: int):
    """Stepped once per optimizer step; the warmup never outlasts the stage."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer,
        num_warmup_steps=min(section.warmup_steps, steps),
        num_training_steps=steps,
        min_lr_rate=section.min_lr_ratio,
    )
