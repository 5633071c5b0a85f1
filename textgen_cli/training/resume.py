"""Checkpoints of a running stage, and resuming from one: the state, weights, optimizer and
schedule come back, and the run must cut the data as the interrupted one did."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from textgen_cli.core.errors import UserError
from textgen_cli.core.progress import log
from textgen_cli.training.state import Loop, LoopState
from textgen_cli.training.validation import validation_loss

if TYPE_CHECKING:
    from textgen_cli.core.loaded_recipe import LoadedRecipe


def resume_or_begin(loop: Loop, resume_from: Path | None) -> None:
    """A resumed run takes its state, weights, optimizer and schedule from the checkpoint (and
    cuts metrics.jsonl back to it); a new one first logs the untrained model's validation loss."""
    from textgen_cli.training import checkpoint

    ranks = loop.ranks
    settings = resume_settings_hash(loop.loaded, ranks.world)
    state = loop.state = LoopState(settings_hash=settings)
    if resume_from is not None:
        saved = checkpoint.load(
            resume_from, loop.accelerator.unwrap_model(loop.model), loop.optimizer, loop.scheduler, ranks.rank
        )
        state = loop.state = LoopState(**saved)
        check_resume_layout(state, loop.section.batch_size, ranks.world, resume_from)
        if state.settings_hash != settings:
            log(f"warning: the recipe's settings differ from those of the interrupted run ({resume_from})")
            state.settings_hash = settings
        if ranks.main:
            loop.run.truncate_metrics(state.metrics_lines)
            moved = (
                f", now with {ranks.world} processes instead of {state.processes}"
                if state.processes != ranks.world
                else ""
            )
            log(f"{loop.stage}: resumed at step {state.step}/{loop.steps}{moved}")
    else:
        state.first_val = state.last_val = validation_loss(loop)
        if ranks.main:
            loop.run.append_metrics({"step": 0, **state.first_val})
            log(f"{loop.stage}: validation loss before training {state.first_val['val_loss']:.4f}")
    # how this run cuts the data, saved with its checkpoints
    state.processes, state.global_micro_batch = ranks.world, loop.sampler.global_batch


def save_checkpoint(loop: Loop) -> Path:
    from textgen_cli.training import checkpoint

    state = loop.state
    state.metrics_lines = loop.run.metrics_lines
    unwrapped = loop.accelerator.unwrap_model(loop.model)
    return checkpoint.save(
        loop.run.work,
        state.step,
        unwrapped,
        loop.optimizer,
        loop.scheduler,
        asdict(state),
        loop.loaded.recipe.checkpoint.keep_last,
        loop.ranks,
    )


def resume_settings_hash(loaded: LoadedRecipe, world: int) -> str:
    """The settings hash a resumed run is checked against, with the per-process batch size replaced
    by the global micro-batch: 2 processes x 4 and 1 process x 8 are the same experiment."""
    from textgen_cli.core.loaded_recipe import settings_digest

    values = loaded.to_dict()
    values["train"]["batch_size"] = values["train"]["batch_size"] * world
    values.pop("distributed", None)  # switching between DDP and FSDP on resume is allowed
    values.pop("resume", None)  # how this run was started, not what it trains: --resume sets it
    return settings_digest(values)


def check_resume_layout(state: LoopState, batch_size: int, world: int, path: Path) -> None:
    """The data position is counted in global micro-batches, so the number of processes may change
    on resume as long as processes x train.batch_size stays what it was."""
    if state.global_micro_batch in (0, batch_size * world):  # 0: a checkpoint from before this was recorded
        return
    saved = state.global_micro_batch
    fix = (
        f"resume with train.batch_size={saved // world}"
        if saved % world == 0
        else f"resume with a number of processes that divides {saved}"
    )
    raise UserError(
        f"checkpoint {path} was written by {state.processes} process(es) x train.batch_size={saved // max(state.processes, 1)} = {saved} "
        f"sequences per micro-batch, but this run has {world} x {batch_size} = {batch_size * world}: the data position would not carry over; {fix}"
    )
