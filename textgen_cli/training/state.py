"""What the loop carries: the run as each step sees it (`Loop`), what a checkpoint saves besides the
weights (`LoopState`), and one optimizer step's sums (`StepStats`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from textgen_cli.core.progress import Reporter
from textgen_cli.models.flops import Lengths
from textgen_cli.objectives import Examples
from textgen_cli.training.distribution import Ranks
from textgen_cli.training.run_dir import RunDir
from textgen_cli.training.sampler import EpochSampler
from textgen_cli.training.signals import StopSignals

if TYPE_CHECKING:
    from textgen_cli.core.loaded_recipe import LoadedRecipe
    from textgen_cli.core.schema import TrainSection
    from textgen_cli.models import Role


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


@dataclass
class Loop:
    """One stage's training as each of its steps sees it: what is trained and how, on what data,
    and where it is written. `state` is what a checkpoint saves besides the weights."""

    loaded: LoadedRecipe
    stage: str
    steps: int  # the stage's optimizer steps
    model: Any  # as accelerate prepared it (DDP-wrapped, or sharded by FSDP)
    plain_class: type  # the model's own class, before sharding: what final/ holds
    role: Role  # the model's family: what its batches cost (role.batch_lengths)
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
