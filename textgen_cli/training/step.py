"""One optimizer step: forward and backward over its micro-batches, sums over processes, clipping,
then the update or a skipped step. Losses are summed over label tokens and divided by the tokens of
the whole optimizer step, so accumulation does not change what is optimised."""

from __future__ import annotations

import contextlib
import math
import time
from typing import TYPE_CHECKING

from textgen_cli.core.errors import TrainingDiverged
from textgen_cli.models.flops import Lengths
from textgen_cli.objectives import IGNORE_INDEX, token_loss_sum
from textgen_cli.training.distribution import sum_over_ranks
from textgen_cli.training.state import Loop, StepStats

if TYPE_CHECKING:
    import torch


def clean_step(model, batch: dict[str, torch.Tensor], causal: bool, scale: float, accelerator) -> dict[str, float]:
    """The plain objective: backpropagate the token loss of one micro-batch, scaled by `scale`
    (1 / label tokens of the whole optimizer step). Returns the summed loss for logging."""
    with accelerator.autocast():
        loss_sum, _ = token_loss_sum(model, batch, causal)
    accelerator.backward(loss_sum * scale)
    return {"loss_sum": float(loss_sum.detach())}


def optimizer_step(loop: Loop) -> StepStats:
    """One optimizer step: forward and backward over its micro-batches, the sums over processes,
    gradient clipping, then the update (or a skipped step, see `update_or_skip`) and the schedule."""
    ranks, section = loop.ranks, loop.section
    step = loop.state.step + 1
    started = time.perf_counter()
    micro = micro_batches(loop, step)
    # the tokens of the whole optimizer step, over every micro-batch and every process
    (label_tokens,) = ranks.total(sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in micro))
    # DDP averages gradients over processes, hence world / tokens
    loss_sum, extras = backward(loop, micro, scale=ranks.world / max(label_tokens, 1))
    lengths = sum((loop.role.batch_lengths(b) for b in micro), Lengths())
    summed = sum_over_ranks(
        ranks,
        step={"loss_sum": loss_sum, "stop_votes": float(loop.signals.received is not None)},
        lengths=lengths.as_dict(),
        extras=extras,
    )
    totals = summed["step"]
    loss = totals["loss_sum"] / max(label_tokens, 1)
    grad_norm = loop.accelerator.clip_grad_norm_(
        loop.model.parameters(), section.clip_grad if section.clip_grad > 0 else float("inf")
    )
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)  # FSDP: a DTensor
    lr = loop.scheduler.get_last_lr()[0]
    loop.state.step = step
    update_or_skip(loop, step, loss=loss, grad_norm=grad_norm)
    loop.scheduler.step()
    return StepStats(
        step=step,
        loss=loss,
        extras=per_step(summed["extras"], label_tokens=label_tokens, micro_batches=len(micro) * ranks.world),
        grad_norm=grad_norm,
        lr=lr,
        encoder_tokens=int(summed["lengths"]["encoder"]),
        decoder_tokens=int(summed["lengths"]["decoder"]),
        lengths=Lengths(**summed["lengths"]),
        seconds=time.perf_counter() - started,
        stop_requested=totals["stop_votes"] > 0,
    )


def micro_batches(loop: Loop, step: int) -> list[dict[str, torch.Tensor]]:
    """This process's train.grad_accum micro-batches of optimizer step `step` (1-based), on the
    device: a pure function of the step, so a resumed run sees the batches the whole run would."""
    grad_accum = loop.section.grad_accum
    batches = [loop.sampler.batch((step - 1) * grad_accum + m) for m in range(grad_accum)]
    return [{k: v.to(loop.device) for k, v in loop.train_set.collate(idx, epoch).items()} for idx, epoch in batches]


def backward(loop: Loop, micro: list[dict[str, torch.Tensor]], *, scale: float) -> tuple[float, dict[str, float]]:
    """`step_fn` on every micro-batch (it backpropagates the loss times `scale`), gradients
    synchronised across processes on the last one only. Returns the summed loss and the sums of
    step_fn's other statistics."""
    from textgen_cli.training import fsdp

    ranks, model = loop.ranks, loop.model
    loss_sum = 0.0
    extras: dict[str, float] = {}
    for index, batch in enumerate(micro):
        sync = index == len(micro) - 1 or ranks.world == 1
        with (
            contextlib.nullcontext()
            if sync
            else fsdp.gradient_sync(model, False)
            if ranks.sharded
            else loop.accelerator.no_sync(model)
        ):
            stats = loop.step_fn(model, batch, loop.role.shifted_labels, scale, loop.accelerator)
        loss_sum += stats.pop("loss_sum")
        for key, value in stats.items():
            extras[key] = extras.get(key, 0.0) + value
    return loss_sum, extras


def per_step(extras: dict[str, float], *, label_tokens: float, micro_batches: int) -> dict[str, float]:
    """step_fn's statistics for the whole step: `*_sum` values are token sums, divided by the step's
    label tokens like the loss (and named without `_sum`); the others are averaged over the
    micro-batches of every process."""
    out = {}
    for key, value in extras.items():
        if key.endswith("_sum"):
            out[key[:-4]] = value / max(label_tokens, 1)
        else:
            out[key] = value / micro_batches
    return out


def update_or_skip(loop: Loop, step: int, *, loss: float, grad_norm: float) -> None:
    """Apply the update. A non-finite loss or gradient skips the step instead (train.on_nonfinite:
    skip), or stops the run (stop, or more than train.max_skips skipped steps)."""
    from textgen_cli.training import checkpoint

    section, state, optimizer = loop.section, loop.state, loop.optimizer
    # fp16: an overflowing gradient is the grad scaler's to handle (it skips the step and lowers the scale)
    scaler_overflow = loop.accelerator.scaler is not None and math.isfinite(loss)
    if math.isfinite(loss) and (math.isfinite(grad_norm) or scaler_overflow):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return
    what = "loss" if not math.isfinite(loss) else "gradient"
    optimizer.zero_grad(set_to_none=True)
    state.skipped += 1
    if section.on_nonfinite == "stop" or state.skipped > section.max_skips:
        found = checkpoint.latest(loop.run.work)
        kept = (
            f"; the last good checkpoint is {found} (resume with --resume, e.g. with a lower train.lr)" if found else ""
        )
        after = f" after {state.skipped - 1} skipped steps" if state.skipped > 1 else ""
        raise TrainingDiverged(f"{loop.stage}: non-finite {what} at step {step}{after}; stopping{kept}")
    loop.reporter.message(
        f"{loop.stage} step {step}: non-finite {what}, step skipped ({state.skipped}/{section.max_skips})"
    )
