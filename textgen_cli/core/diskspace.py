"""A full disk: found before a run starts where it can be, reported clearly where it happens anyway.

Everything textgen writes into a run (checkpoints, `final/`, `metrics.jsonl`, `summary.json`), the
packed-blocks cache and evaluation outputs goes through `writing()`: a write that fails because the
filesystem is full removes its partial file or folder at once (it would keep the disk full, and could
be mistaken for a result) and raises `DiskFull` (exit 1), which names the path, the space the write
needed, the space free, and what is intact and how to continue.

Libraries do not always say that the disk was full: `torch.save` reports a failed write as
`RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos ...`, losing the errno. A
failed write is therefore also taken for a full disk when the filesystem has less room left than the
write needed, which is what a full disk looks like from here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from textgen_cli.core.errors import DiskFull, UserError

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# how the libraries word errno 28 / 122 when they keep only the text (safetensors: "os error 28")
NO_SPACE_WORDS = ("no space left on device", "os error 28", "disk quota exceeded", "os error 122")
NOT_WRITABLE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})

Lazy = Union[str, Callable[[], str]]  # noqa: UP007 (a runtime alias)
LazyBytes = Union[int, None, Callable[[], int | None]]  # noqa: UP007


def existing_ancestor(path: Path) -> Path:
    """`path` or its nearest existing parent: where a file about to be written will live."""
    path = Path(path).absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Bytes an ordinary process may still write on the filesystem holding `path`."""
    return shutil.disk_usage(existing_ancestor(path)).free


def mount_point(path: Path) -> Path:
    path = existing_ancestor(path).resolve()
    while not os.path.ismount(path) and path.parent != path:
        path = path.parent
    return path


def human(n_bytes: float) -> str:
    """1536 -> '1.5 KB', 5_000_000 -> '4.8 MB' (binary units, as `df -h` shows them)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n_bytes) < 1024 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    raise AssertionError("unreachable")


def tree_bytes(path: Path) -> int:
    """Bytes held by the files under `path` (0 if it does not exist)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_no_space(exc: BaseException, path: Path, needed: int | None) -> bool:
    """Did this failed write of `needed` bytes to `path` fail because the filesystem is full?"""
    for cause in _chain(exc):
        if isinstance(cause, OSError) and cause.errno in NO_SPACE_ERRNOS:
            return True
        if any(words in str(cause).lower() for words in NO_SPACE_WORDS):
            return True
    # the library lost the errno (torch.save): a filesystem without room for the write is the cause
    return needed is not None and isinstance(exc, (OSError, RuntimeError)) and free_bytes(path) < needed


def no_space_error(what: str, path: Path, needed: int | None, then: str) -> DiskFull:
    free = free_bytes(path)
    need = f"it needs about {human(needed)} and {human(free)} are free" if needed else f"{human(free)} are free"
    return DiskFull(f"no space left on the device for {what} {path}: {need} on {mount_point(path)}; {then}")


def remove(path: Path) -> None:
    """Remove a partial file or folder, whatever it is, ignoring what is already gone."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _value(value):
    return value() if callable(value) else value


@contextlib.contextmanager
def writing(what: str, path: Path, needed: LazyBytes, then: Lazy, partial: Path | None = None) -> Iterator[None]:
    """Around a write of about `needed` bytes to `path`: on any failure the `partial` file or folder
    is removed at once; a failure caused by a full disk becomes DiskFull, whose message is `what`,
    `path`, the space needed and free, then `then` (what is intact and how to continue; computed
    after the partial write is gone, so it can name what is left)."""
    try:
        yield
    except BaseException as exc:
        size = _value(needed)  # before removing the partial write: an estimate may measure it
        full = (
            isinstance(exc, Exception) and not isinstance(exc, (DiskFull, UserError)) and is_no_space(exc, path, size)
        )
        if partial is not None:
            remove(partial)
        if full:
            raise no_space_error(what, path, size, _value(then)) from exc
        raise


def check_writable(folder: Path, keep: bool = True) -> None:
    """Create `folder` (and its parents) and a file in it, or refuse with exit 2: a run must not
    find out at its first checkpoint that it cannot write its results. With `keep=False` the
    folders this made are removed again (a check before any work, which may still fail later)."""
    made = [parent for parent in (folder, *folder.parents) if not parent.exists()]
    try:
        for attempt in range(3):  # another process's check may remove a folder it made meanwhile
            try:
                folder.mkdir(parents=True, exist_ok=True)
                fd, probe = tempfile.mkstemp(dir=folder, prefix=".textgen-write-test-")
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        if exc.errno in NOT_WRITABLE_ERRNOS:
            raise UserError(
                f"cannot write in '{folder}' ({exc.strerror}): make it writable, or set run.root to a writable directory"
            ) from None
        if exc.errno in NO_SPACE_ERRNOS:
            raise UserError(
                f"cannot write in '{folder}': no space left on the device ({human(free_bytes(folder))} free on {mount_point(folder)}); free some space, or set run.root to a disk with room"
            ) from None
        raise
    finally:
        if not keep:
            for created in made:  # innermost first; one another process filled in stays
                with contextlib.suppress(OSError):
                    created.rmdir()


# Pre-flight: what a training stage will write, against the room there is.
WARN_MARGIN = 1.5  # warn below 1.5 x the estimate: other writers, logs and TensorBoard files share the disk
CHECKPOINT_COPIES = 3  # weights, and AdamW's two moments of the same size (fp32 like the weights)
# per checkpoint: the scheduler's and RNG states, state.json, the manifest, file headers (about 50 KB);
# per final/: its configuration files
SMALL_FILES_BYTES = 256 * 1024


@dataclass
class SpaceEstimate:
    checkpoint: int  # bytes of one checkpoint
    checkpoints: int  # how many exist at once, at most
    final: int  # bytes of final/
    present: int  # bytes of checkpoints already in the run (a resumed run): already on the disk

    @property
    def total(self) -> int:
        return self.checkpoint * self.checkpoints + self.final

    @property
    def needed(self) -> int:
        return max(0, self.total - self.present)


def estimate_run(
    parameter_bytes: int, tokenizer_bytes: int, steps: int, every: int, keep_last: int, present: int = 0
) -> SpaceEstimate:
    """The most a stage has on the disk at once: keep_last checkpoints plus the one being written
    (counting only as many as the run saves, and one for an interruption), and final/."""
    saves = (steps - 1) // every if every else 0
    return SpaceEstimate(
        checkpoint=CHECKPOINT_COPIES * parameter_bytes + SMALL_FILES_BYTES,
        checkpoints=min(keep_last, saves) + 1,
        final=parameter_bytes + tokenizer_bytes + SMALL_FILES_BYTES,
        present=present,
    )


def check_room(estimate: SpaceEstimate, folder: Path, warn: Callable[[str], None]) -> None:
    """Refuse (exit 2) a run the filesystem has no room for, and warn when the room is tight."""
    free = free_bytes(folder)
    what = (
        f"the run will write about {human(estimate.needed)} ({estimate.checkpoints} checkpoint{'s' if estimate.checkpoints > 1 else ''} of "
        f"{human(estimate.checkpoint)} at once, and final/ of {human(estimate.final)}"
        + (f", less {human(estimate.present)} of checkpoints already there" if estimate.present else "")
        + f") and {human(free)} are free on {mount_point(folder)}"
    )
    if free < estimate.needed:
        raise UserError(
            f"not enough free space for {folder}: {what}; free some space, lower checkpoint.keep_last, or set run.root to a disk with more room"
        )
    if free < WARN_MARGIN * estimate.needed:
        warn(
            f"warning: little free space for {folder}: {what}; if the disk fills up, the run stops with the newest checkpoint intact"
        )
