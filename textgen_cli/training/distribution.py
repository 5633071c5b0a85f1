"""Several processes (DDP, or FSDP in `fsdp.py`): this process's rank, sums over processes, and the
accelerator that puts the model on its device with its precision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from textgen_cli.core.errors import UserError

if TYPE_CHECKING:
    from textgen_cli.core.schema import TrainSection


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


def check_strategy(strategy: str, world: int, adversarial: bool, stage: str, method: str) -> None:
    if strategy == "fsdp" and world > 1 and adversarial:
        raise UserError(
            f"{stage}: adv_train.method={method} perturbs the input embeddings outside the model's forward pass, "
            "which FSDP's sharded parameters do not allow; use distributed.strategy=ddp for adv-train"
        )


def sum_over_ranks(ranks: Ranks, **groups: dict[str, float]) -> dict[str, dict[str, float]]:
    """Named values summed over every process in one all-reduce: packed into one tensor in sorted
    order (the same on every process), unpacked by name. One process: the values as they are."""
    names = [(group, key) for group in sorted(groups) for key in sorted(groups[group])]
    totals = ranks.total(*(groups[group][key] for group, key in names))
    out: dict[str, dict[str, float]] = {group: {} for group in groups}
    for (group, key), value in zip(names, totals):
        out[group][key] = value
    return out
