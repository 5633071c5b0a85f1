"""Embedding-space adversarial objectives: FGM, PGD, FreeLB and R3F.

The perturbation is added to the input word embeddings and fed through `inputs_embeds`, never by
editing the embedding weight: both families tie that weight to the output layer (and `sora` shares it
with the decoder), so editing it would perturb the softmax too. For `sora` only the encoder input is
perturbed; for `chatgpt` the context positions or every position (`adv_train.positions`). The
perturbation is always zero on padding. Norms are per example, over its (positions x hidden) slice.

Each objective is a `step_fn` for the shared training loop: it backpropagates one micro-batch and
returns the clean loss sum, the adversarial loss sum and the perturbation norm for logging.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from textgen_cli.objectives import IGNORE_INDEX, aligned, forward_logits, token_loss_sum

if TYPE_CHECKING:
    import torch

METHODS = ("none", "fgm", "pgd", "freelb", "r3f")
# Literature defaults (see docs/adversarial.md): epsilon, step size, ascent steps, init magnitude.
DEFAULTS = {
    "fgm": {"epsilon": 1.0, "step_size": 0.0, "ascent_steps": 1, "init_mag": 0.0},
    "pgd": {"epsilon": 1.0, "step_size": 0.3, "ascent_steps": 3, "init_mag": 0.64},
    "freelb": {"epsilon": 0.3, "step_size": 0.1, "ascent_steps": 2, "init_mag": 0.1},
    "r3f": {"epsilon": 1e-5, "step_size": 0.0, "ascent_steps": 0, "init_mag": 0.0},
    "none": {"epsilon": 0.0, "step_size": 0.0, "ascent_steps": 0, "init_mag": 0.0},
}


@dataclass
class AdvSettings:
    method: str
    epsilon: float
    step_size: float
    ascent_steps: int
    init_mag: float
    norm: str  # "l2" or "inf"
    weight: float  # lambda in L = L_clean + lambda * L_adv
    positions: str  # chatgpt: "context" or "all"


def settings_from(section) -> AdvSettings:
    """Recipe values, with the method's literature default wherever the recipe says null."""
    defaults = DEFAULTS[section.method]
    pick = lambda key: getattr(section, key) if getattr(section, key) is not None else defaults[key]  # noqa: E731
    return AdvSettings(
        method=section.method,
        epsilon=float(pick("epsilon")),
        step_size=float(pick("step_size")),
        ascent_steps=int(pick("ascent_steps")),
        init_mag=float(pick("init_mag")),
        norm=section.norm,
        weight=section.weight,
        positions=section.positions,
    )


def perturbation_mask(batch: dict[str, torch.Tensor], causal: bool, positions: str) -> torch.Tensor:
    """(batch, positions, 1) float mask of the input positions that may be perturbed."""
    mask = batch["attention_mask"].bool()
    if causal and positions == "context":
        mask = mask & (batch["labels"] == IGNORE_INDEX)
    return mask.unsqueeze(-1).float()


def _per_example_norm(x: torch.Tensor, norm: str) -> torch.Tensor:
    flat = x.reshape(x.size(0), -1)
    values = flat.abs().amax(dim=1) if norm == "inf" else flat.norm(dim=1)
    return values.view(-1, *([1] * (x.dim() - 1)))


def normalized_step(grad: torch.Tensor, mask: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent direction of unit size in `norm`, zero on masked-out positions."""
    grad = grad * mask
    if norm == "inf":
        return grad.sign() * mask
    return grad / _per_example_norm(grad, "l2").clamp_min(1e-12)


def project(delta: torch.Tensor, mask: torch.Tensor, epsilon: float, norm: str) -> torch.Tensor:
    """Back into the epsilon ball (per example); epsilon <= 0 means unbounded."""
    delta = delta * mask
    if epsilon <= 0:
        return delta
    if norm == "inf":
        return delta.clamp(-epsilon, epsilon)
    scale = (epsilon / _per_example_norm(delta, "l2").clamp_min(1e-12)).clamp(max=1.0)
    return delta * scale


def initial_delta(
    shape: torch.Size, mask: torch.Tensor, init_mag: float, norm: str, like: torch.Tensor
) -> torch.Tensor:
    """FreeLB's init: U(-1, 1) scaled by init_mag / sqrt(positions x hidden) (L2), or U(-mag, mag) (inf)."""
    import torch

    delta = (torch.rand(shape, dtype=like.dtype, device=like.device) * 2 - 1) * mask
    if init_mag <= 0:
        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    if norm == "inf":
        return delta * init_mag
    positions = mask.reshape(mask.size(0), -1).sum(dim=1).clamp_min(1)
    return delta * (init_mag / (positions * shape[-1]).sqrt()).view(-1, 1, 1)


def embed(model, accelerator, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The input word embeddings exactly as the model computes them from input_ids."""
    return accelerator.unwrap_model(model).get_input_embeddings()(batch["input_ids"])


class AdversarialStep:
    """A `step_fn` for the training loop implementing `settings.method`."""

    def __init__(self, settings: AdvSettings):
        self.s = settings

    def __call__(self, model, batch, causal: bool, scale: float, accelerator) -> dict[str, float]:
        method = getattr(self, f"_{self.s.method}")
        return method(model, batch, causal, scale, accelerator, perturbation_mask(batch, causal, self.s.positions))

    def _fgm(self, model, batch, causal, scale, accelerator, mask) -> dict[str, float]:
        with accelerator.autocast():
            embeddings = embed(model, accelerator, batch)
            embeddings.retain_grad()
            clean, _ = token_loss_sum(model, batch, causal, embeddings)
        accelerator.backward(clean * scale)  # parameter gradients of L_clean, and dL/de
        r = (self.s.epsilon * normalized_step(embeddings.grad.detach(), mask, self.s.norm)).detach()
        with accelerator.autocast():
            adv, _ = token_loss_sum(model, batch, causal, embed(model, accelerator, batch) + r)
        accelerator.backward(adv * self.s.weight * scale)
        return {
            "loss_sum": float(clean.detach()),
            "adv_loss_sum": float(adv.detach()),
            "delta_norm": float(_per_example_norm(r, self.s.norm).mean()),
        }

    def _pgd(self, model, batch, causal, scale, accelerator, mask) -> dict[str, float]:
        import torch

        with accelerator.autocast():
            clean, _ = token_loss_sum(model, batch, causal)
        accelerator.backward(clean * scale)
        base = embed(model, accelerator, batch).detach()
        delta = project(
            initial_delta(base.shape, mask, self.s.init_mag, self.s.norm, base), mask, self.s.epsilon, self.s.norm
        )
        for _ in range(self.s.ascent_steps):
            delta.requires_grad_(True)
            with accelerator.autocast():
                loss, _ = token_loss_sum(model, batch, causal, base + delta)
            # the ascent moves delta only: no parameter gradients are accumulated here
            (grad,) = torch.autograd.grad(loss, delta)
            delta = project(
                delta.detach() + self.s.step_size * normalized_step(grad, mask, self.s.norm),
                mask,
                self.s.epsilon,
                self.s.norm,
            )
        with accelerator.autocast():
            adv, _ = token_loss_sum(model, batch, causal, embed(model, accelerator, batch) + delta)
        accelerator.backward(adv * self.s.weight * scale)
        return {
            "loss_sum": float(clean.detach()),
            "adv_loss_sum": float(adv.detach()),
            "delta_norm": float(_per_example_norm(delta, self.s.norm).mean()),
        }

    def _freelb(self, model, batch, causal, scale, accelerator, mask) -> dict[str, float]:
        """K ascent steps whose parameter gradients all accumulate ("free" training); the objective
        is the mean of the K adversarial losses, with no separate clean term (Zhu et al. 2020)."""
        import torch

        with torch.no_grad(), accelerator.autocast():
            clean, _ = token_loss_sum(model, batch, causal)  # logged only
        steps = max(1, self.s.ascent_steps)
        base_shape = batch["input_ids"].shape + (accelerator.unwrap_model(model).get_input_embeddings().embedding_dim,)
        like = accelerator.unwrap_model(model).get_input_embeddings().weight
        delta = project(
            initial_delta(torch.Size(base_shape), mask, self.s.init_mag, self.s.norm, like),
            mask,
            self.s.epsilon,
            self.s.norm,
        )
        adv_total = 0.0
        for t in range(steps):
            delta.requires_grad_(True)
            with accelerator.autocast():
                loss, _ = token_loss_sum(model, batch, causal, embed(model, accelerator, batch) + delta)
            accelerator.backward(loss * scale / steps)
            adv_total += float(loss.detach()) / steps
            if t == steps - 1:
                break
            delta = project(
                delta.detach() + self.s.step_size * normalized_step(delta.grad.detach(), mask, self.s.norm),
                mask,
                self.s.epsilon,
                self.s.norm,
            )
        return {
            "loss_sum": float(clean),
            "adv_loss_sum": adv_total,
            "delta_norm": float(_per_example_norm(delta.detach(), self.s.norm).mean()),
        }

    def _r3f(self, model, batch, causal, scale, accelerator, mask) -> dict[str, float]:
        """L + lambda * symmetric KL between the output distributions for clean and noised inputs,
        summed over label tokens (Aghajanyan et al. 2021); Gaussian noise N(0, eps^2)."""
        import torch
        import torch.nn.functional as F

        with accelerator.autocast():
            embeddings = embed(model, accelerator, batch)
            noise = torch.randn_like(embeddings) * self.s.epsilon * mask
            logits, labels = aligned(forward_logits(model, batch, embeddings), batch["labels"], causal)
            noisy, _ = aligned(forward_logits(model, batch, embeddings + noise), batch["labels"], causal)
        selected = labels != IGNORE_INDEX
        clean = F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        p = F.log_softmax(logits[selected].float(), dim=-1)
        q = F.log_softmax(noisy[selected].float(), dim=-1)
        sym_kl = (p.exp() * (p - q)).sum() + (q.exp() * (q - p)).sum()
        accelerator.backward((clean + self.s.weight * sym_kl) * scale)
        return {
            "loss_sum": float(clean.detach()),
            "adv_loss_sum": float(sym_kl.detach()),
            "delta_norm": float(_per_example_norm(noise, "l2").mean()),
        }
