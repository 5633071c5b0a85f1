"""Run directories: `runs/<recipe name>/<stage>/`.

A stage writes into `<stage>.partial/` and only a finished stage is renamed to `<stage>/`, so a
failed or interrupted run never leaves a half-written result where a finished one is expected, and
never destroys the earlier finished result until the new one is complete. An interrupted stage
keeps its `.partial/` with checkpoints, for `--resume`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

from textgen_cli import __version__, diskspace
from textgen_cli.errors import UserError

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
RECIPE_FILE = "recipe.yaml"
FINAL_DIR = "final"


def check_run_location(path: Path, keep: bool = True) -> None:
    """Refuse (exit 2) a stage's run directory `path` that cannot be written: a file in its way, a
    read-only or unwritable run.root. `keep=False`: leave no folders behind (a check before any work)."""
    for parent in (path.parent, *path.parent.parents):
        if parent.exists() and not parent.is_dir():
            raise UserError(f"run directory '{path}': '{parent}' is a file, expected a directory")
    if path.exists() and not path.is_dir():
        raise UserError(f"run directory '{path}' is a file, expected a directory")
    diskspace.check_writable(path.parent, keep=keep)


class RunDir:
    """One stage's output: `<stage>/` when finished, `<stage>.partial/` while running (checkpoints
    live there), and `<stage>.lock` while a process owns it."""

    def __init__(self, path: Path):
        self.path = path
        self.work = path.with_name(path.name + ".partial")
        self.lock_file = path.with_name(path.name + ".lock")
        self.metrics_lines = 0
        self._locked = False

    def begin(self, resume: bool) -> Path | None:
        """Lock the run and prepare the work directory; returns the checkpoint to resume from."""
        from textgen_cli import checkpoint
        from textgen_cli.progress import log

        check_run_location(self.path)  # checked before data preparation too (cli); again here, cheaply
        self._lock()
        previous = self.path.with_name(self.path.name + ".previous")
        if previous.is_dir() and not self.path.exists():
            os.replace(previous, self.path)  # a crash in the middle of commit(): put the old result back
        try:
            if resume:
                self._remove_leftovers()
            found = (checkpoint.newest_valid(self.work, log) if resume else checkpoint.latest(self.work)) if self.work.is_dir() else None
            if resume and found is not None:
                log(f"resuming from {found}")
                return found
            if resume:
                log(f"nothing to resume in {self.work}; starting afresh")
            elif found is not None:
                log(f"discarding the interrupted run in {self.work} (newest checkpoint {found.name}); use --resume to continue it instead")
            if self.work.exists():
                shutil.rmtree(self.work)
            self.work.mkdir(parents=True)
            return None
        except BaseException:
            self.release()
            raise

    def _remove_leftovers(self) -> None:
        """What a save cut short by a crash or a full disk left behind (a `.tmp-*` checkpoint, a
        file's temporary copy): never used, and it may hold the space the run needs."""
        from textgen_cli import checkpoint
        from textgen_cli.progress import log

        temporary_copies = [tmp for tmp in self.work.glob(".*.tmp") if tmp.is_file()]  # write_text_atomic's
        for leftover in temporary_copies:
            diskspace.remove(leftover)
        removed = checkpoint.remove_leftovers(self.work / checkpoint.CHECKPOINTS) + temporary_copies
        if removed:
            log(f"removed what an interrupted write left behind: {', '.join(str(p.relative_to(self.work)) for p in removed)}")

    def _lock(self) -> None:
        from textgen_cli.progress import log

        for _ in range(2):
            try:
                fd = os.open(self.lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner, host = _lock_owner(self.lock_file)
                if host is not None and host != platform.node():
                    raise UserError(
                        f"run directory '{self.path}' is locked by process {owner} on host {host} (lock file {self.lock_file}); "
                        "textgen cannot tell from here whether it still runs: delete the lock file if it does not"
                    ) from None
                if owner is not None and _alive(owner):
                    raise UserError(f"run directory '{self.path}' is in use by process {owner} (lock file {self.lock_file}); wait for it or stop it") from None
                gone = f"process {owner} is gone" if owner is not None else "its owner cannot be read"
                log(f"taking over the stale lock {self.lock_file} ({gone})")
                self.lock_file.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps({"pid": os.getpid(), "host": platform.node()}))
            self._locked = True
            return
        raise UserError(f"cannot lock run directory '{self.path}' ({self.lock_file})")

    def release(self) -> None:
        writer = getattr(self, "_tensorboard", None)
        if writer is not None:
            writer.close()
            self._tensorboard = None
        if self._locked:
            self.lock_file.unlink(missing_ok=True)
            self._locked = False

    def enable_tensorboard(self) -> None:
        """Also write the metrics series as TensorBoard events under `<run>/tensorboard/`."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("train.tensorboard=true needs the tensorboard package: pip install 'textgen[tensorboard]'") from None
        self._tensorboard = SummaryWriter(log_dir=str(self.work / "tensorboard"))

    def resume_hint(self) -> str:
        from textgen_cli import checkpoint

        return checkpoint.resume_hint(self.work)

    def append_metrics(self, record: dict[str, Any]) -> None:
        path = self.work / METRICS_FILE
        line = json.dumps(record) + "\n"
        size = path.stat().st_size if path.exists() else 0
        try:
            with diskspace.writing("the metrics file", path, len(line.encode()), self.resume_hint):
                with path.open("a", encoding="utf-8") as handle:
                    handle.write(line)
        except BaseException:
            with contextlib.suppress(OSError):
                os.truncate(path, size)  # no half line: the file holds whole records only
            raise
        self.metrics_lines += 1
        writer = getattr(self, "_tensorboard", None)
        if writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    writer.add_scalar(key, value, global_step=record["step"])
            writer.flush()

    def truncate_metrics(self, lines: int) -> None:
        """On resume: keep exactly the lines written before the checkpoint."""
        path = self.work / METRICS_FILE
        kept = path.read_text(encoding="utf-8").splitlines(keepends=True)[:lines] if path.exists() else []
        write_text_atomic(path, "".join(kept))
        self.metrics_lines = len(kept)

    def write_json(self, name: str, value: Any) -> None:
        write_text_atomic(self.work / name, json.dumps(value, indent=2) + "\n", then=self.resume_hint)

    def commit(self) -> None:
        """Swap the finished work in place of any previous result (begin() repairs a swap cut
        short by a crash), then drop the checkpoints, which a finished stage no longer needs."""
        previous = self.path.with_name(self.path.name + ".previous")
        if previous.exists():
            shutil.rmtree(previous)
        if self.path.exists():
            os.replace(self.path, previous)
        os.replace(self.work, self.path)
        shutil.rmtree(previous, ignore_errors=True)
        shutil.rmtree(self.path / "checkpoints", ignore_errors=True)
        self.release()

    def abort(self) -> None:
        """A failed stage: keep the work directory only if it holds a checkpoint to resume from."""
        from textgen_cli import checkpoint

        if checkpoint.latest(self.work) is None:
            shutil.rmtree(self.work, ignore_errors=True)
        self.release()


def _lock_owner(lock_file: Path) -> tuple[int | None, str | None]:
    """(pid, host) of a lock file's owner, (None, None) if unreadable."""
    try:
        owner = json.loads(lock_file.read_text(encoding="utf-8"))
        return int(owner["pid"]), owner.get("host")
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


NOTHING_CHANGED = "the file is unchanged (nothing was written): free some space, then run again"


def write_text_atomic(path: Path, text: str, then: "str | Callable[[], str]" = NOTHING_CHANGED) -> None:
    """Replace `path` with `text` in one step: a crash leaves the old content or the new, and a full
    disk raises DiskFull (exit 1) naming `path` and the space needed, followed by `then`, with the
    temporary copy removed and the old content untouched."""
    tmp = path.with_name(f".{path.name}.tmp")
    data = text.encode("utf-8")
    with diskspace.writing("file", path, len(data), then, partial=tmp):
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)


def read_metrics(run_path: Path) -> list[dict[str, Any]]:
    with (run_path / METRICS_FILE).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def reset_peak_memory() -> None:
    """Start a stage's peak-memory measurement afresh (several stages can run in one process)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:  # Linux: writing 5 to clear_refs resets the peak resident set (VmHWM)
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def peak_memory_mb(device_type: str) -> float:
    if device_type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    try:  # the peak resident set since reset_peak_memory
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    # elsewhere ru_maxrss (KiB on Linux, bytes on macOS): the peak of the whole process
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def versions() -> dict[str, str]:
    import accelerate
    import tokenizers
    import torch
    import transformers

    return {
        "textgen": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "accelerate": accelerate.__version__,
    }
