"""Sharded data parallelism (`distributed.strategy: fsdp`) with torch's FSDP2 (`fully_shard`, the
engine accelerate's FSDP plugin drives), and the state-dict helpers checkpoints use for every
strategy.

Each transformer block (the model's `_no_split_modules`) is its own FSDP unit and the model root
holds the rest (embeddings, tied output layer, final norm), so only one block's full parameters
exist at a time. Checkpoints always hold *full*, unsharded states (gathered on rank 0), so a run can
be resumed with another number of processes or another strategy, and `final/` is a plain
transformers model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def shard(model) -> Any:
    """Shard `model` in place over the default process group: one FSDP unit per block, then the root."""
    from torch.distributed.fsdp import fully_shard

    from textgen_cli.models import transformer_blocks

    for block in transformer_blocks(model):
        fully_shard(block)
    fully_shard(model)
    return model


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def gradient_sync(model, sync: bool) -> Iterator[None]:
    """FSDP's counterpart of DDP's `no_sync`: skip the reduce-scatter on accumulation micro-batches."""
    model.set_requires_gradient_sync(sync)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def tied_aliases(model) -> dict[str, str]:
    """Second names of tied parameters -> the first name (GPT-2's `lm_head.weight` -> `wte`)."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        else:
            first[id(param)] = name
    return aliases


def full_model_state(model) -> dict[str, Any]:
    """The unsharded weights on CPU, tied duplicates left out (a collective call under FSDP: every
    rank must make it; only rank 0 gets the tensors, the others an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    aliases = tied_aliases(model)
    return {name: tensor.contiguous() for name, tensor in state.items() if name not in aliases}


def load_model_state(model, state: dict[str, Any]) -> None:
    """Load full weights (as `full_model_state` gives them) into a sharded model: every rank passes
    the whole dict and keeps its own shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    state = dict(state)
    for alias, name in tied_aliases(model).items():
        if alias not in state and name in state:
            state[alias] = state[name]
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def full_optimizer_state(model, optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter name, unsharded, on CPU: the same format for one
    process, DDP and FSDP, so a checkpoint resumes under any of them (collective under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        model, _inner(optimizer), options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_optimizer_state(model, optimizer, state: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, _inner(optimizer), state, options=StateDictOptions(full_state_dict=True))


def _inner(optimizer) -> Any:
    """The torch optimizer inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)
