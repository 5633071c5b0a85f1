"""Resumable checkpoints, written atomically.

A checkpoint is a directory `checkpoints/step-NNNNNNN/` holding the model weights (safetensors),
the optimizer and scheduler states, the RNG states and the loop state (data position, counters).
It is written to a temporary directory, every file fsync'ed, then renamed into place; only then
does the `latest` pointer move to it. A crash at any point leaves either the previous checkpoint or
the new one, never a half-written one under a real name.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from textgen_cli.errors import UserError

CHECKPOINTS = "checkpoints"
LATEST = "latest"
PREFIX = "step-"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())


def host_rng_state() -> dict[str, Any]:
    """Python's and numpy's global RNG states as JSON (no pickle: a checkpoint must not run code)."""
    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss], "numpy": [name, keys.tolist(), position, has_gauss, cached]}


def set_host_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))


def _rng_file(rank: int) -> str:
    return "rng.pt" if rank == 0 else f"rng-{rank}.pt"


def save(root: Path, step: int, model, optimizer, scheduler, loop_state: dict[str, Any], keep_last: int, ranks=None) -> Path:
    """Write checkpoint `step` under `root/checkpoints/` atomically, then prune old ones.

    The model and optimizer states are full (unsharded, parameters named), whatever the strategy:
    every process takes part in gathering them (FSDP), rank 0 writes them, each rank writes its own
    RNG state, and rank 0 then renames the folder into place."""
    import torch
    from safetensors.torch import save_file

    from textgen_cli import fsdp

    main = ranks is None or ranks.main
    weights: dict[str, Any] = {}
    optimizer_state: dict[str, Any] = {}
    if main or fsdp.is_sharded(model):  # gathering shards is a collective; a DDP replica's copy would be thrown away
        weights = fsdp.full_model_state(model)
        optimizer_state = fsdp.full_optimizer_state(model, optimizer)
    rank = 0 if ranks is None else ranks.rank
    folder = root / CHECKPOINTS
    final = folder / f"{PREFIX}{step:07d}"
    tmp = folder / f".tmp-{PREFIX}{step:07d}"
    try:
        if main:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            torch.save(optimizer_state, tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            state = {"step": step, **loop_state, "rng": host_rng_state()}
            (tmp / "state.json").write_text(json.dumps(state), encoding="utf-8")
        if ranks is not None:
            ranks.barrier()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        torch.save({"torch": torch.get_rng_state(), "cuda": cuda}, tmp / _rng_file(rank))
        if ranks is not None:
            ranks.barrier()
        if main:
            for file in tmp.iterdir():
                _fsync_file(file)
            _fsync_dir(tmp)
            if final.exists():  # a checkpoint of this step from an earlier attempt: replace it
                _discard(final)
            os.replace(tmp, final)
            _fsync_dir(folder)
            pointer_tmp = folder / f".{LATEST}.tmp"
            pointer_tmp.write_text(final.name, encoding="utf-8")
            _fsync_file(pointer_tmp)
            os.replace(pointer_tmp, folder / LATEST)
            _fsync_dir(folder)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest(root)
        kept = f"; the previous checkpoint is kept: {previous}" if previous else ""
        raise UserError(f"cannot write checkpoint {final}: {exc.strerror or exc}{kept}") from exc
    if main:
        prune(folder, keep_last, newest=final)
    if ranks is not None:
        ranks.barrier()
    return final


def _discard(path: Path) -> None:
    """Delete a checkpoint without ever leaving a half-deleted one under a real name: rename it
    out of the way first (atomic), then remove it."""
    doomed = path.with_name(f".old-{path.name}")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    _fsync_dir(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def prune(folder: Path, keep_last: int, newest: Path) -> None:
    steps = sorted(p for p in folder.glob(f"{PREFIX}*") if p.is_dir())
    for old in steps[:-keep_last]:
        if old != newest:
            _discard(old)
    for leftover in [*folder.glob(f".tmp-{PREFIX}*"), *folder.glob(f".old-{PREFIX}*")]:
        shutil.rmtree(leftover, ignore_errors=True)


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint: the pointer's target, else the highest step directory."""
    folder = root / CHECKPOINTS
    if not folder.is_dir():
        return None
    pointer = folder / LATEST
    if pointer.is_file():
        target = folder / pointer.read_text(encoding="utf-8").strip()
        if _complete(target):
            return target
    candidates = sorted((p for p in folder.glob(f"{PREFIX}*") if _complete(p)), reverse=True)
    return candidates[0] if candidates else None


def _complete(path: Path) -> bool:
    return all((path / name).is_file() for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json"))


def load(path: Path, model, optimizer, scheduler, rank: int = 0) -> dict[str, Any]:
    """Restore everything saved by `save` (this rank's RNG state; rank 0's for a rank the
    checkpoint has none for, as when resuming with more processes); returns the loop state."""
    import torch
    from safetensors.torch import load_file, load_model

    from textgen_cli import fsdp

    try:
        if fsdp.is_sharded(model):
            fsdp.load_model_state(model, load_file(str(path / "model.safetensors")))
        else:
            load_model(model, str(path / "model.safetensors"))
        fsdp.load_optimizer_state(model, optimizer, torch.load(path / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        rng_file = path / _rng_file(rank)
        rng = torch.load(rng_file if rng_file.is_file() else path / "rng.pt", weights_only=True)
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except Exception as exc:  # a damaged checkpoint can fail in many ways
        raise UserError(f"checkpoint '{path}' cannot be loaded: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    set_host_rng_state(state.pop("rng"))
    return state
