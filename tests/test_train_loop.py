"""The training loop's bookkeeping, without a model: sums over processes by name, and step_fn's
statistics turned into per-step values (the loop itself is covered end to end, bit for bit, by the
resume tests in test_crash_safety.py, test_signals.py and test_distributed.py)."""

from __future__ import annotations

from textgen_cli.training.distribution import sum_over_ranks
from textgen_cli.training.step import per_step


class FakeRanks:
    """`Ranks.total` of `world` processes that all hold the same values; records what was packed."""

    def __init__(self, world: int):
        self.world = world
        self.packed: list[tuple[float, ...]] = []

    def total(self, *values: float) -> list[float]:
        self.packed.append(values)
        return [float(v * self.world) for v in values]


def test_sums_over_ranks_come_back_under_their_names_from_one_all_reduce():
    ranks = FakeRanks(world=3)
    summed = sum_over_ranks(
        ranks,
        step={"loss_sum": 2.0, "stop_votes": 0.0, "decoder_tokens": 10},
        extras={"delta_norm": 0.5, "adv_loss_sum": 1.0},
    )
    assert len(ranks.packed) == 1  # one collective per step
    # packed in sorted order, so every process lays its values out the same way
    assert ranks.packed[0] == (1.0, 0.5, 10, 2.0, 0.0)
    assert summed == {
        "step": {"decoder_tokens": 30.0, "loss_sum": 6.0, "stop_votes": 0.0},
        "extras": {"adv_loss_sum": 3.0, "delta_norm": 1.5},
    }


def test_one_process_gets_its_values_back_unchanged():
    class One:
        world = 1

        def total(self, *values):
            return list(values)

    assert sum_over_ranks(One(), step={"tokens": 7}, extras={}) == {"step": {"tokens": 7}, "extras": {}}


def test_sums_are_normalised_like_the_loss_and_the_rest_averaged_over_micro_batches():
    assert per_step({"adv_loss_sum": 12.0, "delta_norm": 3.0}, label_tokens=4, micro_batches=2) == {
        "adv_loss": 3.0,
        "delta_norm": 1.5,
    }
    assert per_step({"kl_sum": 5.0}, label_tokens=0, micro_batches=1) == {"kl": 5.0}  # no label tokens: divided by 1
