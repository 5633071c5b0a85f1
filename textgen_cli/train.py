"""The one training loop, shared by every stage.

AdamW with warmup + cosine decay, gradient clipping and accumulation, validation every N steps,
accelerate for the device (bf16 autocast on CUDA). Losses are summed over label tokens and divided
by the tokens of the whole optimizer step, so accumulation does not change what is optimised.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np

from textgen_cli.errors import TrainingDiverged, UserError
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


def count_tokens(batch: dict[str, "torch.Tensor"]) -> int:
    """Tokens processed: non-pad inputs, plus decoder targets for encoder-decoder models."""
    tokens = int(batch["attention_mask"].sum())
    if "decoder_input_ids" in batch:
        tokens += int((batch["labels"] != IGNORE_INDEX).sum())
    return tokens


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


def train_stage(loaded: "LoadedRecipe", stage: str, model, tokenizer, train_set: Examples, val_set: Examples, extra: dict[str, Any]) -> dict[str, Any]:
    """Train `model` for one stage and write the run directory. Returns the summary."""
    import torch
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    recipe = loaded.recipe
    section = recipe.train
    stage_section = getattr(recipe, stage)
    steps = stage_section.steps
    lr = stage_section.lr if stage_section.lr is not None else section.lr
    check_split_sizes(train_set, val_set, section.batch_size, f"{stage} data")

    accelerator = make_accelerator(section)
    device = accelerator.device
    run = RunDir(loaded.run_dir(stage))
    run.begin()
    try:
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

        first_val = evaluate_loss(model, val_set, section.batch_size, section.eval_batches, device)
        run.append_metrics({"step": 0, **first_val})
        log(f"{stage}: validation loss before training {first_val['val_loss']:.4f}")
        reporter = Reporter(stage, steps)
        tokens_seen, train_time, last_val = 0, 0.0, first_val
        window_tokens, window_time, window_loss, window_steps = 0, 0.0, 0.0, 0
        started = time.perf_counter()
        try:
            for step in range(1, steps + 1):
                step_start = time.perf_counter()
                batches = [sampler.batch((step - 1) * section.grad_accum + m) for m in range(section.grad_accum)]
                micro = [{k: v.to(device) for k, v in train_set.collate(idx, epoch).items()} for idx, epoch in batches]
                step_label_tokens = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in micro)
                step_loss = 0.0
                for batch in micro:
                    with accelerator.autocast():
                        loss_sum, _ = token_loss_sum(model, batch, train_set.causal)
                    accelerator.backward(loss_sum / max(step_label_tokens, 1))
                    step_loss += float(loss_sum.detach())
                step_loss /= max(step_label_tokens, 1)
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), section.clip_grad if section.clip_grad > 0 else float("inf"))
                if not math.isfinite(step_loss) or not math.isfinite(float(grad_norm)):
                    raise TrainingDiverged(f"{stage}: non-finite {'loss' if not math.isfinite(step_loss) else 'gradient'} at step {step}; stopping")
                current_lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)

                step_tokens = sum(count_tokens(b) for b in micro)
                elapsed_step = time.perf_counter() - step_start
                tokens_seen += step_tokens
                train_time += elapsed_step
                window_tokens += step_tokens
                window_time += elapsed_step
                window_loss += step_loss
                window_steps += 1
                metrics = None
                if step % section.log_every == 0 or step == steps:
                    metrics = {
                        "step": step,
                        "loss": window_loss / window_steps,
                        "lr": current_lr,
                        "grad_norm": float(grad_norm),
                        "tokens": tokens_seen,
                        "tokens_per_s": window_tokens / max(window_time, 1e-9),
                        "elapsed_s": time.perf_counter() - started,
                    }
                    run.append_metrics(metrics)
                    window_tokens, window_time, window_loss, window_steps = 0, 0.0, 0.0, 0
                reporter.step(step, metrics)
                if step % section.eval_every == 0 or step == steps:
                    last_val = evaluate_loss(model, val_set, section.batch_size, section.eval_batches, device)
                    run.append_metrics({"step": step, "tokens": tokens_seen, **last_val})
                    reporter.message(f"{stage} step {step}: validation loss {last_val['val_loss']:.4f} (ppl {last_val['val_ppl']:.2f})")
        finally:
            reporter.close()
        wall = time.perf_counter() - started

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
            "family": recipe.model.family,
            "parameters": n_params,
            "steps": steps,
            "batch_size": section.batch_size,
            "grad_accum": section.grad_accum,
            "train_examples": len(train_set),
            "tokens": tokens_seen,
            "wall_time_s": wall,
            "train_time_s": train_time,
            "tokens_per_s": tokens_seen / max(train_time, 1e-9),
            "final_train_loss": metrics["loss"] if metrics else None,
            "initial_val_loss": first_val["val_loss"],
            "final_val_loss": last_val["val_loss"],
            "final_val_ppl": last_val["val_ppl"],
            "peak_memory_mb": peak_memory_mb(device.type),
            "device": str(device),
            "seed": section.seed,
            "versions": versions(),
            "run_dir": str(run.path),
            "final_dir": str(run.path / FINAL_DIR),
            **extra,
        }
        run.write_json(SUMMARY_FILE, summary)
    except BaseException:
        run.abort()
        raise
    run.commit()
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
