"""The one training loop, shared by every stage.

AdamW with warmup + cosine decay, gradient clipping and accumulation, validation every N steps,
accelerate for the device (bf16 autocast on CUDA). Losses are summed over label tokens and divided
by the tokens of the whole optimizer step, so accumulation does not change what is optimised.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from textgen_cli.errors import Interrupted, TrainingDiverged, UserError
from textgen_cli.flops import Lengths, flops_model
from textgen_cli.model_card import write_model_card
from textgen_cli.models import role_of_model, transformer_blocks
from textgen_cli.models.lora import merged_for_saving
from textgen_cli.objectives import IGNORE_INDEX, summed_nll, token_loss_sum
from textgen_cli.progress import Reporter, log
from textgen_cli.results import RunSummary
from textgen_cli.runs import FINAL_DIR, RECIPE_FILE, SUMMARY_FILE, RunDir, peak_memory_mb, versions, write_text_atomic
from textgen_cli.stages import section_of

if TYPE_CHECKING:
    import torch

    from textgen_cli.recipe import LoadedRecipe
    from textgen_cli.schema import TrainSection


class Examples(Protocol):
    causal: bool

    def __len__(self) -> int: ...

    def collate(self, indices: Sequence[int], epoch: int) -> dict[str, torch.Tensor]: ...


GROUP_WINDOW = 50  # global batches sorted together by length when train.group_by_length is on


@dataclass
class EpochSampler:
    """Micro-batch k is a pure function of k: a seeded permutation per epoch, sliced in order.

    With several processes the k-th global micro-batch (batch_size x world examples) is cut into
    one slice per rank, so N processes see exactly the examples one process would with an N times
    larger batch."""

    n_examples: int
    batch_size: int
    seed: int
    rank: int = 0
    world: int = 1
    lengths: Sequence[int] | None = None  # given: length-grouped batches (train.group_by_length)

    def __post_init__(self) -> None:
        self.global_batch = self.batch_size * self.world
        self.per_epoch = self.n_examples // self.global_batch
        self._epoch = -1
        self._order: np.ndarray | None = None

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The epoch's seeded permutation. With lengths, it is cut into windows of
        GROUP_WINDOW global batches, each window sorted by length and cut into batches, and the
        batches shuffled: every batch holds examples of similar length (little padding) while the
        order of batches stays random."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.n_examples)
        if self.lengths is None:
            return order
        lengths = np.asarray(self.lengths)
        usable = self.per_epoch * self.global_batch
        window = GROUP_WINDOW * self.global_batch
        grouped = [
            chunk[np.argsort(lengths[chunk], kind="stable")]
            for chunk in np.split(order[:usable], range(window, usable, window))
        ]
        batches = np.concatenate(grouped).reshape(self.per_epoch, self.global_batch)
        return np.concatenate([batches[rng.permutation(self.per_epoch)].reshape(-1), order[usable:]])

    def batch(self, k: int) -> tuple[list[int], int]:
        epoch, j = divmod(k, self.per_epoch)
        if epoch != self._epoch:
            self._order = self.epoch_order(epoch)
            self._epoch = epoch
        start = j * self.global_batch + self.rank * self.batch_size
        return self._order[start : start + self.batch_size].tolist(), epoch


@dataclass
class Ranks:
    """This process's place in a data-parallel run (a single process is rank 0 of 1). Only rank 0
    writes run files, checkpoints and logs; sums over ranks go through one all-reduce."""

    accelerator: Any
    # FSDP: every forward is a collective, so every rank must run the same number of them
    sharded: bool = False

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def total(self, *values: float) -> list[float]:
        if self.world == 1:
            return list(values)
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, value: Any) -> list[Any]:
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            self.accelerator.wait_for_everyone()


def make_accelerator(section: TrainSection):
    import torch
    from accelerate import Accelerator

    if section.device == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no CUDA device is available; use train.device=auto or cpu")
    on_cpu = section.device == "cpu" or not torch.cuda.is_available()
    if section.precision == "fp16":
        if on_cpu:
            raise UserError(
                "train.precision=fp16 needs a CUDA device (fp16 autocast with a grad scaler); on CPU use train.precision=fp32 or bf16"
            )
        torch.backends.cuda.matmul.allow_tf32 = True
        return Accelerator(mixed_precision="fp16")  # accelerate scales the loss and unscales before clipping
    bf16 = section.precision == "bf16" or (section.precision == "auto" and not on_cpu)
    if not on_cpu:
        # TF32 matmuls for whatever still runs in fp32 under bf16 autocast
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Accelerator(cpu=on_cpu, mixed_precision="bf16" if bf16 else "no")


def count_lengths(batch: dict[str, torch.Tensor]) -> Lengths:
    """What the batch's compute depends on (flops.Lengths): non-pad inputs of the one stack of a
    decoder-only model; encoder inputs and decoder targets of an encoder-decoder model, per row."""
    import torch

    inputs = batch["attention_mask"].sum(dim=1).to(torch.float64)
    if "decoder_input_ids" in batch:
        targets = (batch["labels"] != IGNORE_INDEX).sum(dim=1).to(torch.float64)
        return Lengths(
            float(inputs.sum()),
            float(targets.sum()),
            float((inputs**2).sum()),
            float((targets**2).sum()),
            float((inputs * targets).sum()),
        )
    return Lengths(decoder=float(inputs.sum()), decoder_sq=float((inputs**2).sum()))


def evaluate_loss(
    model, examples: Examples, *, batch_size: int, max_batches: int | None, device, ranks: Ranks | None = None
) -> dict[str, float]:
    """Validation loss per token, perplexity and the number of tokens scored."""
    total, n_tokens = summed_nll(model, examples, batch_size, device, max_batches=max_batches, ranks=ranks)
    loss = total / max(n_tokens, 1)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_tokens": n_tokens}


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


def check_split_sizes(train_set: Examples, val_set: Examples, batch_size: int, what: str, world: int = 1) -> None:
    if len(train_set) < batch_size * world:
        per = f" x {world} processes" if world > 1 else ""
        raise UserError(
            f"{what}: the training split gives {len(train_set)} examples, fewer than train.batch_size={batch_size}{per}; "
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
    attention: dict[str, float] = field(default_factory=dict)  # Lengths' squared sums, for the FLOPs
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
    # how the data was cut: the position is counted in global micro-batches of this many sequences
    processes: int = 1
    global_micro_batch: int = 0


class StopSignals:
    """The first SIGINT / SIGTERM asks the loop to checkpoint at the next step boundary and exit
    with 128 + signal; a second one exits at once (checkpoint writes are atomic, so nothing breaks)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            os._exit(128 + signum)
        self.received = signum
        log(
            f"{signal.Signals(signum).name}: saving a checkpoint at the end of this step (send it again to exit at once)"
        )

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def clean_step(model, batch: dict[str, torch.Tensor], causal: bool, scale: float, accelerator) -> dict[str, float]:
    """The plain objective: backpropagate the token loss of one micro-batch, scaled by `scale`
    (1 / label tokens of the whole optimizer step). Returns the summed loss for logging."""
    with accelerator.autocast():
        loss_sum, _ = token_loss_sum(model, batch, causal)
    accelerator.backward(loss_sum * scale)
    return {"loss_sum": float(loss_sum.detach())}


def check_strategy(strategy: str, world: int, adversarial: bool, stage: str, method: str) -> None:
    if strategy == "fsdp" and world > 1 and adversarial:
        raise UserError(
            f"{stage}: adv_train.method={method} perturbs the input embeddings outside the model's forward pass, "
            "which FSDP's sharded parameters do not allow; use distributed.strategy=ddp for adv-train"
        )


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
    run = RunDir(loaded.run_dir(stage))
    resume = recipe.resume == "auto"
    resume_from = run.begin(resume=resume, steps=getattr(recipe, section_of(stage)).steps) if ranks.main else None
    if ranks.main:
        try:
            check_disk_space(run, model, tokenizer, recipe, stage)
            if recipe.train.report_to or recipe.train.tensorboard:
                run.start_trackers(loaded, stage)
        except UserError:
            run.abort()
            raise
    ranks.barrier()
    resume_from = ranks.gather(resume_from)[0]  # rank 0 picked (and checked) the checkpoint: every rank resumes from it
    try:
        with StopSignals() as signals:
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
    except BaseException:
        if ranks.main:
            run.abort()
        raise
    ranks.barrier()
    if ranks.main:
        run.commit(keep_checkpoint=recipe.checkpoint.keep_final)
    return summary


@dataclass
class Loop:
    """One stage's training as each of its steps sees it: what is trained and how, on what data,
    and where it is written. `state` is what a checkpoint saves besides the weights."""

    loaded: LoadedRecipe
    stage: str
    steps: int  # the stage's optimizer steps
    model: Any  # as accelerate prepared it (DDP-wrapped, or sharded by FSDP)
    plain_class: type  # the model's own class, before sharding: what final/ holds
    n_params: int
    tokenizer: Any
    optimizer: Any
    scheduler: Any  # warmup + cosine decay, stepped once per optimizer step
    step_fn: Callable[..., dict[str, float]]  # one micro-batch's forward and backward (clean_step, ...)
    train_set: Examples
    val_set: Examples
    sampler: EpochSampler
    accelerator: Any
    ranks: Ranks
    run: RunDir
    signals: StopSignals
    state: LoopState = field(default_factory=LoopState)
    reporter: Reporter | None = None  # the progress lines; set while steps run
    clock: float = 0.0  # time.perf_counter() at the start of the run, less the time a resumed run had spent

    @property
    def section(self) -> TrainSection:
        return self.loaded.recipe.train

    @property
    def device(self):
        return self.accelerator.device


@dataclass
class StepStats:
    """One optimizer step, summed over its micro-batches and every process."""

    step: int
    loss: float  # per label token of the whole step; not finite when it diverged (the step was skipped)
    extras: dict[str, float]  # step_fn's other statistics (adv_loss, delta_norm, ...)
    grad_norm: float  # before clipping
    lr: float  # the learning rate the step was taken with
    encoder_tokens: int
    decoder_tokens: int
    lengths: Lengths
    seconds: float
    stop_requested: bool  # a signal reached at least one process: every process stops after this step


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
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    from textgen_cli import fsdp

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
    if section.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    blocks = transformer_blocks(model)  # before sharding renames their classes (FSDPGPT2Block)
    if ranks.sharded:
        fsdp.shard(model)  # before the optimizer is built: it must hold the sharded parameters
    optimizer = build_optimizer(model, section.weight_decay, lr, device.type)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer,
        num_warmup_steps=min(section.warmup_steps, steps),
        num_training_steps=steps,
        min_lr_rate=section.min_lr_ratio,
    )
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


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 * 2**20  # the largest glibc accepts on 64-bit: half its heap size
TRIM_THRESHOLD = 2**30


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep the memory a training step frees for the next step to reuse.

    A step allocates the same large tensors every time (logits and their gradients: 12 MB for nanoGPT's
    CPU settings) and frees them again. By default glibc serves such blocks with fresh mmap pages and
    hands freed memory back to the kernel, so every step pays page faults to get it again. Kept, the
    loop ran 14% faster at nanoGPT's CPU settings (docs/performance.md); it is the lever PyTorch's CPU
    tuning guide pulls with tcmalloc or jemalloc. Blocks up to 32 MB now come from the heap, and up to
    1 GiB of freed heap stays in the process: memory the stage already peaked at, never more. Only
    on glibc (Linux); elsewhere nothing changes. Returns whether it applied."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
    except (OSError, AttributeError):
        return False


def enable_gradient_checkpointing(model) -> None:
    # non-reentrant: works with frozen embeddings (LoRA) and with perturbed input embeddings
    if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def resume_or_begin(loop: Loop, resume_from: Path | None) -> None:
    """A resumed run takes its state, weights, optimizer and schedule from the checkpoint (and
    cuts metrics.jsonl back to it); a new one first logs the untrained model's validation loss."""
    from textgen_cli import checkpoint

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
    lengths = sum((count_lengths(b) for b in micro), Lengths())
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
    from textgen_cli import fsdp

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
            stats = loop.step_fn(model, batch, loop.train_set.causal, scale, loop.accelerator)
        loss_sum += stats.pop("loss_sum")
        for key, value in stats.items():
            extras[key] = extras.get(key, 0.0) + value
    return loss_sum, extras


def sum_over_ranks(ranks: Ranks, **groups: dict[str, float]) -> dict[str, dict[str, float]]:
    """Named values summed over every process in one all-reduce: packed into one tensor in sorted
    order (the same on every process), unpacked by name. One process: the values as they are."""
    names = [(group, key) for group in sorted(groups) for key in sorted(groups[group])]
    totals = ranks.total(*(groups[group][key] for group, key in names))
    out: dict[str, dict[str, float]] = {group: {} for group in groups}
    for (group, key), value in zip(names, totals):
        out[group][key] = value
    return out


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
    from textgen_cli import checkpoint

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


def validation_loss(loop: Loop) -> dict[str, float]:
    section = loop.section
    return evaluate_loss(
        loop.model,
        loop.val_set,
        batch_size=section.batch_size,
        max_batches=section.eval_batches,
        device=loop.device,
        ranks=loop.ranks,
    )


def validate(loop: Loop, step: int) -> None:
    """The validation loss (and, with train.eval_generate, the BLEU of generated replies) into metrics.jsonl."""
    state = loop.state
    state.last_val = validation_loss(loop)
    if loop.ranks.main:
        from textgen_cli.train_eval import validation_generation  # train.eval_generate: val_bleu ({} when off)

        generated = validation_generation(
            loop.loaded, loop.stage, loop.accelerator.unwrap_model(loop.model), loop.tokenizer, loop.ranks.world
        )
        loop.run.append_metrics({"step": step, "tokens": state.tokens_seen, **state.last_val, **generated})
    loop.reporter.message(
        f"{loop.stage} step {step}: validation loss {state.last_val['val_loss']:.4f} (ppl {state.last_val['val_ppl']:.2f})"
    )


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


def save_checkpoint(loop: Loop) -> Path:
    from textgen_cli import checkpoint

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


def finish(loop: Loop, *, notes: dict[str, Any], resumed: bool) -> RunSummary:
    """final/ (the trained model with any LoRA adapters merged, its generation settings, the
    tokenizer), summary.json and the model card."""
    ranks = loop.ranks
    final_dir = loop.run.work / FINAL_DIR
    model, weight_hashes = final_model(loop)
    model = merged_for_saving(model, final_dir, save=ranks.main)  # LoRA: the adapters merged into the weights
    role_of_model(model).configure_generation(model, loop.tokenizer, loop.loaded.recipe.model.context)
    if ranks.main:
        save_final(model, loop.tokenizer, final_dir, loop.run)
    summary = run_summary(loop, model, weight_hashes=weight_hashes, notes=notes, resumed=resumed)
    if ranks.main:
        loop.run.write_json(SUMMARY_FILE, summary.to_dict())
        write_model_card(loop.run.work, summary)  # final/README.md; rewritten with the scores if the stage is evaluated
    return summary


def final_model(loop: Loop) -> tuple[Any, list[str]]:
    """The trained model as a plain one (on rank 0 under FSDP), and the fingerprint of every
    process's weights."""
    from textgen_cli import fsdp

    ranks = loop.ranks
    model = loop.accelerator.unwrap_model(loop.model)
    if ranks.sharded:
        # gather the shards (every rank takes part) into a plain model on rank 0: that is what is saved
        weights = fsdp.full_model_state(model)
        if ranks.main:
            model = unsharded_copy(loop.plain_class, model.config, weights)
        return model, [weights_fingerprint(model)] if ranks.main else []
    # every process must end with the same weights; record each one's fingerprint to show it
    return model, ranks.gather(weights_fingerprint(model))


def run_summary(loop: Loop, model, *, weight_hashes: list[str], notes: dict[str, Any], resumed: bool) -> RunSummary:
    loaded, state, section, ranks = loop.loaded, loop.state, loop.section, loop.ranks
    recipe = loaded.recipe
    return RunSummary(
        stage=loop.stage,
        recipe=str(loaded.path),
        recipe_name=loaded.name,
        settings_hash=loaded.settings_hash(),
        stage_hash=loaded.stage_hash(loop.stage),
        family=recipe.model.family,
        parameters=loop.n_params,
        steps=loop.steps,
        batch_size=section.batch_size,
        grad_accum=section.grad_accum,
        train_examples=len(loop.train_set),
        tokens=state.tokens_seen,
        encoder_tokens=state.encoder_tokens,
        decoder_tokens=state.decoder_tokens,
        flops=flops_model(model).flops(Lengths(state.encoder_tokens, state.decoder_tokens, **state.attention)),
        wall_time_s=state.elapsed,
        train_time_s=state.train_time,
        tokens_per_s=state.tokens_seen / max(state.train_time, 1e-9),
        final_train_loss=state.last_loss,
        initial_val_loss=state.first_val["val_loss"],
        final_val_loss=state.last_val["val_loss"],
        final_val_ppl=state.last_val["val_ppl"],
        skipped_steps=state.skipped,
        resumed=resumed,
        peak_memory_mb=peak_memory_mb(loop.device.type),
        device=str(loop.device),
        processes=ranks.world,
        rank_weight_hashes=weight_hashes,
        strategy=recipe.distributed.strategy if ranks.world > 1 else "single",
        global_batch=section.batch_size * section.grad_accum * ranks.world,
        seed=section.seed,
        versions=versions(),
        run_dir=str(loop.run.path),
        final_dir=str(loop.run.path / FINAL_DIR),
        notes=notes,
    )


def parameter_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def tokenizer_bytes(tokenizer) -> int:
    """About what tokenizer.json takes on the disk (a slow tokenizer has no JSON: 1 MB is plenty)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return len(backend.to_str().encode()) if backend is not None else 2**20


def check_disk_space(run: RunDir, model, tokenizer, recipe, stage: str) -> None:
    """Pre-flight: refuse (exit 2) a stage whose checkpoints and final/ cannot fit on the disk, warn
    when they barely do (docs/reliability.md, "Disk space")."""
    from textgen_cli import checkpoint, diskspace

    estimate = diskspace.estimate_run(
        parameter_bytes(model),
        tokenizer_bytes(tokenizer),
        getattr(recipe, section_of(stage)).steps,
        recipe.checkpoint.every,
        recipe.checkpoint.keep_last,
        # a resumed run's checkpoints are on the disk already (set-aside damaged ones stay, so they do not count)
        present=sum(diskspace.tree_bytes(p) for p in (run.work / checkpoint.CHECKPOINTS).glob(f"{checkpoint.PREFIX}*")),
    )
    diskspace.check_room(estimate, run.work, log)


def save_final(model, tokenizer, folder: Path, run: RunDir) -> None:
    """final/: the model and its tokenizer. On a full disk the partial folder is removed at once (it
    would keep the disk full) and the error names the checkpoint --resume continues from."""
    from textgen_cli import diskspace

    needed = parameter_bytes(model) + tokenizer_bytes(tokenizer)
    with diskspace.writing("the final model", folder, needed, run.resume_hint, partial=folder):
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)


def resume_settings_hash(loaded: LoadedRecipe, world: int) -> str:
    """The settings hash a resumed run is checked against, with the per-process batch size replaced
    by the global micro-batch: 2 processes x 4 and 1 process x 8 are the same experiment."""
    from textgen_cli.recipe import settings_digest

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


def unsharded_copy(model_class, config, weights: dict[str, Any]):
    """A plain (unsharded) model of `model_class` holding the gathered `weights`."""
    from textgen_cli import fsdp

    model = model_class(config).to(next(iter(weights.values())).dtype)
    fsdp.load_model_state(model, weights)
    return model


def weights_fingerprint(model) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
