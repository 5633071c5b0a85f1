"""Resumable checkpoints, written atomically.

A checkpoint is a directory `checkpoints/step-NNNNNNN/` holding the model weights (safetensors),
the optimizer and scheduler states, the RNG states and the loop state (data position, counters).
It is written to a temporary directory, every file fsync'ed, then renamed into place; only then
does the `latest` pointer move to it. A crash at any point leaves either the previous checkpoint or
the new one, never a half-written one under a real name.

Each checkpoint also holds `manifest.json`: the size and sha256 of every file, taken when it was
written. `--resume` checks the newest checkpoint against it, so one damaged afterwards (a truncated
or corrupted file, a bad disk) is found even when it would still load, and the run falls back to the
newest intact one. A full disk while saving removes the partial checkpoint at once (DiskFull).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from textgen_cli.core import diskspace
from textgen_cli.core.errors import UserError
from textgen_cli.data.packing import file_digest

CHECKPOINTS = "checkpoints"
LATEST = "latest"
PREFIX = "step-"
MANIFEST = "manifest.json"
DAMAGED = "damaged-"  # a damaged checkpoint set aside by --resume: kept to look at, never resumed from


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


def save(
    root: Path, step: int, model, optimizer, scheduler, loop_state: dict[str, Any], keep_last: int, ranks=None
) -> Path:
    """Write checkpoint `step` under `root/checkpoints/` atomically, then prune old ones.

    The model and optimizer states are full (unsharded, parameters named), whatever the strategy:
    every process takes part in gathering them (FSDP), rank 0 writes them, each rank writes its own
    RNG state, and rank 0 then renames the folder into place."""
    import torch
    from safetensors.torch import save_file

    from textgen_cli.training import fsdp

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
    pointer_tmp = folder / f".{LATEST}.tmp"
    needed = state_bytes(weights) + state_bytes(optimizer_state) + diskspace.SMALL_FILES_BYTES
    try:
        # a full disk: the partial checkpoint goes at once, and the message names the one intact
        with diskspace.writing("checkpoint", final, needed, lambda: resume_hint(root), partial=tmp):
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
                write_manifest(tmp)
                for file in tmp.iterdir():
                    _fsync_file(file)
                _fsync_dir(tmp)
                if final.exists():  # a checkpoint of this step from an earlier attempt: replace it
                    _discard(final)
                os.replace(tmp, final)
                _fsync_dir(folder)
                with diskspace.writing(
                    "the checkpoint pointer", pointer_tmp, 1024, lambda: resume_hint(root), partial=pointer_tmp
                ):
                    pointer_tmp.write_text(final.name, encoding="utf-8")
                    _fsync_file(pointer_tmp)
                os.replace(pointer_tmp, folder / LATEST)
                _fsync_dir(folder)
    except OSError as exc:  # not a full disk (that is DiskFull): no permission, a read-only filesystem
        previous = latest(root)
        kept = f"; the previous checkpoint is kept: {previous}" if previous else ""
        raise UserError(f"cannot write checkpoint {final}: {exc.strerror or exc}{kept}") from exc
    if main:
        prune(folder, keep_last, newest=final)
    if ranks is not None:
        ranks.barrier()
    return final


def state_bytes(state: Any) -> int:
    """Bytes of the tensors in a (nested) state dict: what saving it writes, give or take headers."""
    import torch

    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(value) for value in state)
    return 0


def write_manifest(folder: Path) -> None:
    """The size and sha256 of every file of the checkpoint, read back from the disk."""
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": file_digest(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1), encoding="utf-8")


def damage(path: Path) -> str | None:
    """Why checkpoint `path` cannot be trusted (a file missing, or not the size or checksum it had
    when it was saved), or None if it is intact. A checkpoint written before manifests existed is
    checked for completeness only."""
    for name in REQUIRED_FILES:
        if not (path / name).is_file():
            return f"{name} is missing"
    manifest = path / MANIFEST
    if not manifest.is_file():
        return None
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        expected = {str(name): (int(entry["bytes"]), str(entry["sha256"])) for name, entry in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"its {MANIFEST} cannot be read"
    for name, (size, digest) in expected.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size:,} bytes, {size:,} when it was saved"
        if file_digest(file) != digest:
            return f"{name} does not match the checksum written when it was saved"
    return None


def remove_leftovers(folder: Path) -> list[Path]:
    """Delete what a save or a pruning cut short left in `folder` (a `.tmp-*` or `.old-*` folder, the
    pointer's temporary file): never used, and it may hold a lot of space. Returns what it removed."""
    if not folder.is_dir():
        return []
    found = [*folder.glob(f".tmp-{PREFIX}*"), *folder.glob(f".old-{PREFIX}*"), *folder.glob(f".{LATEST}.tmp")]
    for leftover in found:
        diskspace.remove(leftover)
    return found


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


REQUIRED_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json")


def _complete(path: Path) -> bool:
    return all((path / name).is_file() for name in REQUIRED_FILES)


def newest_valid(root: Path, warn: Callable[[str], None]) -> Path | None:
    """The checkpoint `--resume` continues from: the newest one that matches its manifest. A damaged
    newer one is reported through `warn` (by name, with what is wrong) and set aside as
    `damaged-step-NNNNNNN`, so that neither this nor a later resume or pruning takes it for a
    checkpoint; the next save of that step writes a new one."""
    folder = root / CHECKPOINTS
    if not folder.is_dir():
        return None
    candidates = sorted((p for p in folder.glob(f"{PREFIX}*") if p.is_dir()), reverse=True)
    pointer = folder / LATEST
    if pointer.is_file():  # the pointer's target first: a higher step can be a leftover of an earlier attempt
        target = folder / pointer.read_text(encoding="utf-8").strip()
        if target in candidates:
            candidates.remove(target)
            candidates.insert(0, target)
    for candidate in candidates:
        problem = damage(candidate)
        if problem is None:
            return candidate
        aside = candidate.with_name(DAMAGED + candidate.name)
        diskspace.remove(aside)
        os.replace(candidate, aside)
        warn(
            f"warning: checkpoint {candidate} is damaged ({problem}); it was moved to {aside.name} and the run falls back to the newest intact checkpoint"
        )
    return None


def resume_hint(root: Path) -> str:
    """What a run that stopped on a write error can continue from: the end of its error message."""
    found = latest(root)
    if found is None:
        return "no checkpoint has been saved yet: free some space, then run the stage again"
    return f"the newest complete checkpoint, {found}, is intact: free some space, then continue with --resume"


def load(path: Path, model, optimizer, scheduler, rank: int = 0) -> dict[str, Any]:
    """Restore everything saved by `save` (this rank's RNG state; rank 0's for a rank the
    checkpoint has none for, as when resuming with more processes); returns the loop state."""
    import torch
    from safetensors.torch import load_file, load_model

    from textgen_cli.training import fsdp

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
        raise UserError(
            f"checkpoint '{path}' cannot be loaded: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    set_host_rng_state(state.pop("rng"))
    return state
