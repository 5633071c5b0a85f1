"""Which examples each optimizer step trains on: a pure function of (step, seed, process), so a
resumed run sees exactly the batches the uninterrupted one would have."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from textgen_cli.core.errors import UserError
from textgen_cli.objectives import Examples

if TYPE_CHECKING:
    pass


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


def check_split_sizes(train_set: Examples, val_set: Examples, batch_size: int, what: str, world: int = 1) -> None:
    if len(train_set) < batch_size * world:
        per = f" x {world} processes" if world > 1 else ""
        raise UserError(
            f"{what}: the training split gives {len(train_set)} examples, fewer than train.batch_size={batch_size}{per}; "
            "use more data or a smaller batch size"
        )
    if len(val_set) == 0:
        raise UserError(f"{what}: the validation split gives no examples")
