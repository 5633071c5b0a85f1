"""The validation loss: NLL summed over every label token (never a mean of batch means), and the
validation lines of metrics.jsonl."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from textgen_cli.objectives import Examples, token_loss_sum
from textgen_cli.training.distribution import Ranks
from textgen_cli.training.state import Loop

if TYPE_CHECKING:
    pass


def summed_nll(
    model,
    examples: Examples,
    batch_size: int,
    device,
    *,
    shifted: bool,
    max_batches: int | None = None,
    ranks: Ranks | None = None,
) -> tuple[float, int]:
    """NLL summed over every label token of `examples`, and the token count (never a mean of batch
    means); with several processes each scores every world-th batch and the sums are added up."""
    import torch

    was_training = model.training
    model.eval()
    total, n_tokens = 0.0, 0
    n_batches = math.ceil(len(examples) / batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    rank, world = (ranks.rank, ranks.world) if ranks is not None else (0, 1)
    rounds = math.ceil(n_batches / world)
    with torch.no_grad():
        for b in range(rank, rounds * world if ranks is not None and ranks.sharded else n_batches, world):
            # under FSDP a rank out of batches scores batch 0 again (and ignores it) so that the
            # other ranks' parameter all-gathers do not wait for it forever
            surplus = b >= n_batches
            indices = (
                range(0, min(len(examples), batch_size))
                if surplus
                else range(b * batch_size, min(len(examples), (b + 1) * batch_size))
            )
            batch = {k: v.to(device) for k, v in examples.collate(list(indices), epoch=0).items()}
            loss_sum, tokens = token_loss_sum(model, batch, shifted)
            if not surplus:
                total += float(loss_sum)
                n_tokens += tokens
    model.train(was_training)
    if ranks is not None:
        total, n_tokens = ranks.total(total, n_tokens)
    return total, int(n_tokens)


def evaluate_loss(
    model,
    examples: Examples,
    *,
    shifted: bool,
    batch_size: int,
    max_batches: int | None,
    device,
    ranks: Ranks | None = None,
) -> dict[str, float]:
    """Validation loss per token, perplexity and the number of tokens scored."""
    total, n_tokens = summed_nll(
        model, examples, batch_size, device, shifted=shifted, max_batches=max_batches, ranks=ranks
    )
    loss = total / max(n_tokens, 1)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_tokens": n_tokens}


def validation_loss(loop: Loop) -> dict[str, float]:
    section = loop.section
    return evaluate_loss(
        loop.model,
        loop.val_set,
        shifted=loop.role.shifted_labels,
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
        from textgen_cli.training.train_eval import validation_generation  # train.eval_generate: val_bleu ({} when off)

        generated = validation_generation(
            loop.loaded, loop.stage, loop.accelerator.unwrap_model(loop.model), loop.tokenizer, loop.ranks.world
        )
        loop.run.append_metrics({"step": step, "tokens": state.tokens_seen, **state.last_val, **generated})
    loop.reporter.message(
        f"{loop.stage} step {step}: validation loss {state.last_val['val_loss']:.4f} (ppl {state.last_val['val_ppl']:.2f})"
    )
