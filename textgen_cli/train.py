"""The one training loop, shared by every stage.

AdamW with warmup + cosine decay, gradient clipping and accumulation, validation every N steps,
accelerate for the device (bf16 autocast on CUDA). Losses are summed over label tokens and divided
by the tokens of the whole optimizer step, so accumulation does not change what is optimised.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import numpy as np

from textgen_cli.errors import Interrupted, TrainingDiverged, UserError
from textgen_cli.flops import flops_model, step_flops
from textgen_cli.objectives import IGNORE_INDEX, token_loss_sum
from textgen_cli.progress import Reporter, log
from textgen_cli.runs import FINAL_DIR, RECIPE_FILE, SUMMARY_FILE, RunDir, peak_memory_mb, versions

if TYPE_CHECKING:
    import torch

    from textgen_cli.recipe import LoadedRecipe
    from textgen_cli.schema import TrainSection


class Examples(Protocol):
    causal: bool

    def __len__(self) -> int: ...

    def collate(self, indices: Sequence[int], epoch: int) -> dict[str, "torch.Tensor"]: ...


@dataclass
class EpochSampler:
    """Micro-batch k is a pure function of k: a seeded permutation per epoch, sliced in order."""

    n_examples: int
    batch_size: int
    seed: int

    def __post_init__(self) -> None:
        self.per_epoch = self.n_examples // self.batch_size
        self._epoch = -1
        self._order: np.ndarray | None = None

    def batch(self, k: int) -> tuple[list[int], int]:
        epoch, j = divmod(k, self.per_epoch)
        if epoch != self._epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.n_examples)
            self._epoch = epoch
        return self._order[j * self.batch_size : (j + 1) * self.batch_size].tolist(), epoch


def make_accelerator(section: "TrainSection"):
    import torch
    from accelerate import Accelerator

    if section.device == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no CUDA device is available; use train.device=auto or cpu")
    on_cpu = section.device == "cpu" or not torch.cuda.is_available()
    bf16 = section.precision == "bf16" or (section.precision == "auto" and not on_cpu)
    return Accelerator(cpu=on_cpu, mixed_precision="bf16" if bf16 else "no")


def count_tokens(batch: dict[str, "torch.Tensor"]) -> tuple[int, int]:
    """(encoder, decoder) tokens processed: non-pad inputs of the one stack of a decoder-only model;
    encoder inputs and decoder targets of an encoder-decoder model."""
    inputs = int(batch["attention_mask"].sum())
    if "decoder_input_ids" in batch:
        return inputs, int((batch["labels"] != IGNORE_INDEX).sum())
    return 0, inputs


def evaluate_loss(model, examples: Examples, batch_size: int, max_batches: int | None, device) -> dict[str, float]:
    """Validation NLL summed over every label token (never a mean of batch means)."""
    import torch

    was_training = model.training
    model.eval()
    total, n_tokens = 0.0, 0
    n_batches = math.ceil(len(examples) / batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    with torch.no_grad():
        for b in range(n_batches):
            indices = range(b * batch_size, min(len(examples), (b + 1) * batch_size))
            batch = {k: v.to(device) for k, v in examples.collate(list(indices), epoch=0).items()}
            loss_sum, tokens = token_loss_sum(model, batch, examples.causal)
            total += float(loss_sum)
            n_tokens += tokens
    model.train(was_training)
    loss = total / max(n_tokens, 1)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_tokens": n_tokens}


def param_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only: biases, norms and (tied) embeddings' 1-D params are left alone."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def check_split_sizes(train_set: Examples, val_set: Examples, batch_size: int, what: str) -> None:
    if len(train_set) < batch_size:
        raise UserError(
            f"{what}: the training split gives {len(train_set)} examples, fewer than train.batch_size={batch_size}; "
            "use more data or a smaller batch size"
        )
    if len(val_set) == 0:
        raise UserError(f"{what}: the validation split gives no examples")


@dataclass
class LoopState:
    """Everything the loop carries from step to step; saved in checkpoints so a resumed run logs
    exactly what the uninterrupted run would have."""

    step: int = 0
    tokens_seen: int = 0
    encoder_tokens: int = 0
    decoder_tokens: int = 0
    train_time: float = 0.0
    elapsed: float = 0.0
    window_tokens: int = 0
    window_time: float = 0.0
    window_loss: float = 0.0
    window_steps: int = 0
    window_extras: dict[str, float] = field(default_factory=dict)
    skipped: int = 0
    metrics_lines: int = 0
    settings_hash: str = ""
    first_val: dict[str, float] = field(default_factory=dict)
    last_val: dict[str, float] = field(default_factory=dict)
    last_loss: float | None = None


class StopSignals:
    """The first SIGINT / SIGTERM asks the loop to checkpoint at the next step boundary and exit
    with 128 + signal; a second one exits at once (checkpoint writes are atomic, so nothing breaks)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            os._exit(128 + signum)
        self.received = signum
        log(f"{signal.Signals(signum).name}: saving a checkpoint at the end of this step (send it again to exit at once)")

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def clean_step(model, batch: dict[str, "torch.Tensor"], causal: bool, scale: float, accelerator) -> dict[str, float]:
    """The plain objective: backpropagate the token loss of one micro-batch, scaled by `scale`
    (1 / label tokens of the whole optimizer step). Returns the summed loss for logging."""
    with accelerator.autocast():
        loss_sum, _ = token_loss_sum(model, batch, causal)
    accelerator.backward(loss_sum * scale)
    return {"loss_sum": float(loss_sum.detach())}


def train_stage(
    loaded: "LoadedRecipe",
    stage: str,
    model,
    tokenizer,
    train_set: Examples,
    val_set: Examples,
    extra: dict[str, Any],
    step_fn: Callable[..., dict[str, float]] = clean_step,
) -> dict[str, Any]:
    """Train `model` for one stage and write the run directory. Returns the summary.

    `step_fn` computes and backpropagates one micro-batch's loss (`clean_step`, or an adversarial
    objective); everything else, from the schedule to checkpoints, is the same for every stage."""
    recipe = loaded.recipe
    check_split_sizes(train_set, val_set, recipe.train.batch_size, f"{stage} data")
    accelerator = make_accelerator(recipe.train)
    run = RunDir(loaded.run_dir(stage))
    resume_from = run.begin(resume=recipe.resume == "auto")
    try:
        with StopSignals() as signals:
            summary = _train(loaded, stage, model, tokenizer, train_set, val_set, extra, step_fn, accelerator, run, resume_from, signals)
    except BaseException:
        run.abort()
        raise
    run.commit()
    return summary


def _train(loaded, stage, model, tokenizer, train_set, val_set, extra, step_fn, accelerator, run: RunDir, resume_from, signals: StopSignals) -> dict[str, Any]:
    import torch
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    from textgen_cli import checkpoint

    recipe = loaded.recipe
    section = recipe.train
    stage_section = getattr(recipe, stage.replace("-", "_"))
    steps = stage_section.steps
    lr = stage_section.lr if stage_section.lr is not None else section.lr
    device = accelerator.device

    (run.work / RECIPE_FILE).write_text(loaded.to_yaml(), encoding="utf-8")
    model.to(device)
    model.train()
    optimizer = torch.optim.AdamW(param_groups(model, section.weight_decay), lr=lr, betas=(0.9, 0.95), eps=1e-8)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=min(section.warmup_steps, steps), num_training_steps=steps, min_lr_rate=section.min_lr_ratio
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    sampler = EpochSampler(len(train_set), section.batch_size, section.seed)
    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"{stage}: {recipe.model.family} model, {n_params:,} parameters, {len(train_set):,} training examples, "
        f"{steps} steps of {section.batch_size}x{section.grad_accum} sequences on {device}"
    )

    state = LoopState(settings_hash=loaded.settings_hash())
    if resume_from is not None:
        saved = checkpoint.load(resume_from, accelerator.unwrap_model(model), optimizer, scheduler)
        state = LoopState(**saved)
        if state.settings_hash != loaded.settings_hash():
            log(f"warning: the recipe's settings differ from those of the interrupted run ({resume_from})")
            state.settings_hash = loaded.settings_hash()
        run.truncate_metrics(state.metrics_lines)
        log(f"{stage}: resumed at step {state.step}/{steps}")
    else:
        state.first_val = state.last_val = evaluate_loss(model, val_set, section.batch_size, section.eval_batches, device)
        run.append_metrics({"step": 0, **state.first_val})
        log(f"{stage}: validation loss before training {state.first_val['val_loss']:.4f}")

    def save_checkpoint() -> Path:
        state.metrics_lines = run.metrics_lines
        return checkpoint.save(run.work, state.step, accelerator.unwrap_model(model), optimizer, scheduler, asdict(state), recipe.checkpoint.keep_last)

    reporter = Reporter(stage, steps, start_step=state.step)
    clock = time.perf_counter() - state.elapsed
    try:
        while state.step < steps:
            step = state.step + 1
            step_start = time.perf_counter()
            batches = [sampler.batch((step - 1) * section.grad_accum + m) for m in range(section.grad_accum)]
            micro = [{k: v.to(device) for k, v in train_set.collate(idx, epoch).items()} for idx, epoch in batches]
            step_label_tokens = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in micro)
            step_loss = 0.0
            step_extras: dict[str, float] = {}
            for batch in micro:
                stats = step_fn(model, batch, train_set.causal, 1.0 / max(step_label_tokens, 1), accelerator)
                step_loss += stats.pop("loss_sum")
                for key, value in stats.items():
                    # `*_sum` values are token sums (normalised like the loss); others are averaged
                    name, weight = (key[:-4], 1.0 / max(step_label_tokens, 1)) if key.endswith("_sum") else (key, 1.0 / len(micro))
                    step_extras[name] = step_extras.get(name, 0.0) + value * weight
            step_loss /= max(step_label_tokens, 1)
            grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), section.clip_grad if section.clip_grad > 0 else float("inf")))
            current_lr = scheduler.get_last_lr()[0]
            state.step = step
            if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
                what = "loss" if not math.isfinite(step_loss) else "gradient"
                optimizer.zero_grad(set_to_none=True)
                state.skipped += 1
                if section.on_nonfinite == "stop" or state.skipped > section.max_skips:
                    found = checkpoint.latest(run.work)
                    kept = f"; the last good checkpoint is {found} (resume with --resume, e.g. with a lower train.lr)" if found else ""
                    raise TrainingDiverged(f"{stage}: non-finite {what} at step {step}{' after ' + str(state.skipped - 1) + ' skipped steps' if state.skipped > 1 else ''}; stopping{kept}")
                reporter.message(f"{stage} step {step}: non-finite {what}, step skipped ({state.skipped}/{section.max_skips})")
            else:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            scheduler.step()

            split = [count_tokens(b) for b in micro]
            state.encoder_tokens += sum(enc for enc, _ in split)
            state.decoder_tokens += sum(dec for _, dec in split)
            step_tokens = sum(enc + dec for enc, dec in split)
            elapsed_step = time.perf_counter() - step_start
            state.tokens_seen += step_tokens
            state.train_time += elapsed_step
            state.window_tokens += step_tokens
            state.window_time += elapsed_step
            if math.isfinite(step_loss):
                state.window_loss += step_loss
                state.window_steps += 1
                for key, value in step_extras.items():
                    state.window_extras[key] = state.window_extras.get(key, 0.0) + value
            metrics = None
            if (step % section.log_every == 0 or step == steps) and state.window_steps:
                metrics = {
                    "step": step,
                    "loss": state.window_loss / state.window_steps,
                    "lr": current_lr,
                    "grad_norm": grad_norm,
                    "tokens": state.tokens_seen,
                    "tokens_per_s": state.window_tokens / max(state.window_time, 1e-9),
                    "elapsed_s": time.perf_counter() - clock,
                    **{key: value / state.window_steps for key, value in state.window_extras.items()},
                }
                run.append_metrics(metrics)
                state.last_loss = metrics["loss"]
                state.window_tokens, state.window_time, state.window_loss, state.window_steps = 0, 0.0, 0.0, 0
                state.window_extras = {}
            reporter.step(step, metrics)
            if step % section.eval_every == 0 or step == steps:
                state.last_val = evaluate_loss(model, val_set, section.batch_size, section.eval_batches, device)
                run.append_metrics({"step": step, "tokens": state.tokens_seen, **state.last_val})
                reporter.message(f"{stage} step {step}: validation loss {state.last_val['val_loss']:.4f} (ppl {state.last_val['val_ppl']:.2f})")
            state.elapsed = time.perf_counter() - clock
            if signals.received is not None:
                saved_at = save_checkpoint()
                raise Interrupted(f"{stage} interrupted at step {step}; checkpoint saved to {saved_at}; continue with --resume", 128 + signals.received)
            if recipe.checkpoint.every and step % recipe.checkpoint.every == 0 and step < steps:
                save_checkpoint()
    finally:
        reporter.close()

    final_dir = run.work / FINAL_DIR
    model = accelerator.unwrap_model(model)
    configure_generation(model, tokenizer, recipe.model.context)
    model.save_pretrained(final_dir)
    tokenizer.save_pretrained(final_dir)
    summary = {
        "stage": stage,
        "recipe": str(loaded.path),
        "recipe_name": loaded.name,
        "settings_hash": loaded.settings_hash(),
        "stage_hash": loaded.stage_hash(stage),
        "family": recipe.model.family,
        "parameters": n_params,
        "steps": steps,
        "batch_size": section.batch_size,
        "grad_accum": section.grad_accum,
        "train_examples": len(train_set),
        "tokens": state.tokens_seen,
        "encoder_tokens": state.encoder_tokens,
        "decoder_tokens": state.decoder_tokens,
        "flops": step_flops(flops_model(model), state.encoder_tokens, state.decoder_tokens),
        "wall_time_s": state.elapsed,
        "train_time_s": state.train_time,
        "tokens_per_s": state.tokens_seen / max(state.train_time, 1e-9),
        "final_train_loss": state.last_loss,
        "initial_val_loss": state.first_val["val_loss"],
        "final_val_loss": state.last_val["val_loss"],
        "final_val_ppl": state.last_val["val_ppl"],
        "skipped_steps": state.skipped,
        "resumed": resume_from is not None,
        "peak_memory_mb": peak_memory_mb(device.type),
        "device": str(device),
        "seed": section.seed,
        "versions": versions(),
        "run_dir": str(run.path),
        "final_dir": str(run.path / FINAL_DIR),
        **extra,
    }
    run.write_json(SUMMARY_FILE, summary)
    return summary


def configure_generation(model, tokenizer, context: int) -> None:
    """Save decoding defaults with the model, so plain `model.generate` stops where textgen's does."""
    config = model.generation_config
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    if model.config.is_encoder_decoder:
        config.decoder_start_token_id = tokenizer.bos_token_id
        config.forced_eos_token_id = None
    config.max_length = context
