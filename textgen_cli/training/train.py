"""The one training loop, shared by every stage; it reads top to bottom: `train_stage` opens the run
folder, `start_loop` sets up the model, optimizer and schedule, `train_steps` runs the steps.

What each step does is next door: one optimizer step (`step.py`), validation (`validation.py`),
checkpoints and resume (`resume.py`), the finished stage's files (`outputs.py`), processes
(`distribution.py`, `fsdp.py`), the batches (`sampler.py`), AdamW (`optim.py`), signals
(`signals.py`), and what the loop carries between steps (`state.py`).
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from textgen_cli.core.errors import Interrupted
from textgen_cli.core.files import RECIPE_FILE, write_text_atomic
from textgen_cli.core.progress import Reporter, log
from textgen_cli.core.results import RunSummary
from textgen_cli.core.stages import section_of
from textgen_cli.models import role_of_model, transformer_blocks
from textgen_cli.objectives import Examples
from textgen_cli.training.distribution import Ranks, check_strategy, make_accelerator
from textgen_cli.training.memory import keep_freed_memory
from textgen_cli.training.optim import build_optimizer, build_schedule
from textgen_cli.training.outputs import check_disk_space, finish
from textgen_cli.training.resume import resume_or_begin, save_checkpoint
from textgen_cli.training.run_dir import RunDir, opened_run
from textgen_cli.training.sampler import EpochSampler, check_split_sizes
from textgen_cli.training.signals import StopSignals
from textgen_cli.training.state import Loop, LoopState, StepStats
from textgen_cli.training.step import clean_step, optimizer_step
from textgen_cli.training.validation import validate

if TYPE_CHECKING:
    from textgen_cli.core.loaded_recipe import LoadedRecipe


def train_stage(
    loaded: LoadedRecipe,
    stage: str,
    *,
    model,
    tokenizer,
    train_set: Examples,
    val_set: Examples,
    notes: dict[str, Any],
    step_fn: Callable[..., dict[str, float]] = clean_step,
) -> RunSummary:
    """Train `model` for one stage and write the run directory. Returns the summary; `notes` are
    the stage's own keys for it (`init_from`, `task`, ...).

    `step_fn` computes and backpropagates one micro-batch's loss (`clean_step`, or an adversarial
    objective); everything else, from the schedule to checkpoints, is the same for every stage."""
    recipe = loaded.recipe
    accelerator = make_accelerator(recipe.train)
    ranks = Ranks(accelerator, sharded=recipe.distributed.strategy == "fsdp" and accelerator.num_processes > 1)
    check_strategy(recipe.distributed.strategy, ranks.world, step_fn is not clean_step, stage, recipe.adv_train.method)
    check_split_sizes(train_set, val_set, recipe.train.batch_size, f"{stage} data", ranks.world)

    def preflight(run: RunDir) -> None:  # before anything is written: refuse a run the disk has no room for
        check_disk_space(run, model, tokenizer, recipe, stage)

    with opened_run(loaded, stage, ranks, preflight) as (run, resume_from), StopSignals() as signals:
        loop = start_loop(
            loaded,
            stage,
            model=model,
            tokenizer=tokenizer,
            train_set=train_set,
            val_set=val_set,
            step_fn=step_fn,
            accelerator=accelerator,
            ranks=ranks,
            run=run,
            signals=signals,
        )
        resume_or_begin(loop, resume_from)
        train_steps(loop)
        summary = finish(loop, notes=notes, resumed=resume_from is not None)
    return summary


def start_loop(
    loaded: LoadedRecipe,
    stage: str,
    *,
    model,
    tokenizer,
    train_set: Examples,
    val_set: Examples,
    step_fn: Callable[..., dict[str, float]],
    accelerator,
    ranks: Ranks,
    run: RunDir,
    signals: StopSignals,
) -> Loop:
    """Everything before the first step: the resolved recipe saved in the run, the model on the
    device (gradient checkpointing, FSDP sharding and compiled blocks as the recipe says), AdamW,
    the warmup + cosine schedule and the sampler."""
    from textgen_cli.training import fsdp

    recipe = loaded.recipe
    section = recipe.train
    stage_section = getattr(recipe, section_of(stage))
    steps = stage_section.steps
    lr = stage_section.lr if stage_section.lr is not None else section.lr
    device = accelerator.device

    if ranks.main:
        write_text_atomic(run.work / RECIPE_FILE, loaded.to_yaml(), then=run.resume_hint)
    keep_freed_memory()
    model.to(device)
    model.train()
    plain_class = type(model)
    role = role_of_model(model)  # before accelerate wraps it
    if section.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    blocks = transformer_blocks(model)  # before sharding renames their classes (FSDPGPT2Block)
    if ranks.sharded:
        fsdp.shard(model)  # before the optimizer is built: it must hold the sharded parameters
    optimizer = build_optimizer(model, section.weight_decay, lr, device.type)
    scheduler = build_schedule(optimizer, section, steps)
    if section.compile:
        # each block compiled in place (one graph, reused by every layer): whatever calls the
        # blocks (the full forward, the label-positions loss, FSDP) runs the compiled code
        for block in blocks:
            block.compile()
    if ranks.sharded:
        optimizer = accelerator.prepare(optimizer)  # the model is already distributed; no DDP around it
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
    lengths = train_set.lengths() if section.group_by_length and hasattr(train_set, "lengths") else None
    sampler = EpochSampler(len(train_set), section.batch_size, section.seed, ranks.rank, ranks.world, lengths)
    n_params = sum(p.numel() for p in accelerator.unwrap_model(model).parameters())
    world = f" x {ranks.world} processes ({recipe.distributed.strategy})" if ranks.world > 1 else ""
    if ranks.main:
        log(
            f"{stage}: {recipe.model.family} model, {n_params:,} parameters, {len(train_set):,} training examples, "
            f"{steps} steps of {section.batch_size}x{section.grad_accum}{world} = {section.batch_size * section.grad_accum * ranks.world} "
            f"sequences (global batch) on {device}"
        )
    return Loop(
        loaded=loaded,
        stage=stage,
        steps=steps,
        model=model,
        plain_class=plain_class,
        role=role,
        n_params=n_params,
        tokenizer=tokenizer,
        optimizer=optimizer,
        scheduler=scheduler,
        step_fn=step_fn,
        train_set=train_set,
        val_set=val_set,
        sampler=sampler,
        accelerator=accelerator,
        ranks=ranks,
        run=run,
        signals=signals,
    )


def enable_gradient_checkpointing(model) -> None:
    # non-reentrant: works with frozen embeddings (LoRA) and with perturbed input embeddings
    if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def train_steps(loop: Loop) -> None:
    """The optimizer steps from where the state stands to the stage's last. Each: one step, its
    logging window, validation when due, then a checkpoint when due or when a signal asks."""
    state, section = loop.state, loop.section
    loop.reporter = Reporter(loop.stage, loop.steps, start_step=state.step, enabled=loop.ranks.main)
    first_step = state.step
    loop.clock = time.perf_counter() - state.elapsed
    try:
        while state.step < loop.steps:
            stats = optimizer_step(loop)
            count_step(state, stats)
            loop.reporter.step(stats.step, close_log_window(loop, stats))
            if stats.step % section.eval_every == 0 or stats.step == loop.steps:
                validate(loop, stats.step)
            state.elapsed = time.perf_counter() - loop.clock
            stop_or_checkpoint(loop, stats)
    finally:
        loop.reporter.close()
    if loop.loaded.recipe.checkpoint.keep_final and state.step > first_step:
        save_checkpoint(loop)  # the finished stage keeps it: --resume with more steps continues from here


def count_step(state: LoopState, stats: StepStats) -> None:
    """Add the step to the run's totals and to the logging window (a diverged step's loss and
    statistics are left out of the window's means)."""
    tokens = stats.encoder_tokens + stats.decoder_tokens
    state.encoder_tokens += stats.encoder_tokens
    state.decoder_tokens += stats.decoder_tokens
    for key in ("encoder_sq", "decoder_sq", "cross"):
        state.attention[key] = state.attention.get(key, 0.0) + getattr(stats.lengths, key)
    state.tokens_seen += tokens
    state.train_time += stats.seconds
    state.window_tokens += tokens
    state.window_time += stats.seconds
    if math.isfinite(stats.loss):
        state.window_loss += stats.loss
        state.window_steps += 1
        for key, value in stats.extras.items():
            state.window_extras[key] = state.window_extras.get(key, 0.0) + value


def close_log_window(loop: Loop, stats: StepStats) -> dict[str, Any] | None:
    """Every train.log_every steps and at the last: the window's mean loss, throughput and
    statistics as one metrics.jsonl line, and a new window. None between them."""
    state = loop.state
    if not ((stats.step % loop.section.log_every == 0 or stats.step == loop.steps) and state.window_steps):
        return None
    metrics = {
        "step": stats.step,
        "loss": state.window_loss / state.window_steps,
        "lr": stats.lr,
        "grad_norm": stats.grad_norm,
        "tokens": state.tokens_seen,
        "tokens_per_s": state.window_tokens / max(state.window_time, 1e-9),
        "elapsed_s": time.perf_counter() - loop.clock,
        **{key: value / state.window_steps for key, value in state.window_extras.items()},
    }
    if loop.ranks.main:
        loop.run.append_metrics(metrics)
    state.last_loss = metrics["loss"]
    state.window_tokens, state.window_time, state.window_loss, state.window_steps = 0, 0.0, 0.0, 0
    state.window_extras = {}
    return metrics


def stop_or_checkpoint(loop: Loop, stats: StepStats) -> None:
    """After a signal (on any process): a checkpoint, then exit with 128 + signal. Otherwise a
    checkpoint every checkpoint.every steps (the last step's is the final model's business)."""
    if stats.stop_requested:
        saved_at = save_checkpoint(loop)
        signum = loop.signals.received or signal.SIGTERM
        raise Interrupted(
            f"{loop.stage} interrupted at step {stats.step}; checkpoint saved to {saved_at}; continue with --resume",
            128 + signum,
        )
    every = loop.loaded.recipe.checkpoint.every
    if every and stats.step % every == 0 and stats.step < loop.steps:
        save_checkpoint(loop)
