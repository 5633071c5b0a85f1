"""One stage's run folder while it trains: `<stage>.partial/` with its checkpoints, the lock that
keeps a second process out, leftovers of an interrupted run, the trackers, and the measurements a
finished run records (peak memory, library versions). Where finished runs live is `core/files.py`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textgen_cli import __version__
from textgen_cli.core import diskspace
from textgen_cli.core.errors import UserError
from textgen_cli.core.files import METRICS_FILE, check_run_location, write_text_atomic
from textgen_cli.core.progress import debug, log
from textgen_cli.core.stages import section_of

if TYPE_CHECKING:
    from textgen_cli.core.loaded_recipe import LoadedRecipe
    from textgen_cli.training.distribution import Ranks


@contextlib.contextmanager
def opened_run(
    loaded: LoadedRecipe, stage: str, ranks: Ranks, preflight: Callable[[RunDir], None]
) -> Iterator[tuple[RunDir, Path | None]]:
    """A stage's run folder, held for the whole stage: entered before the loop, left after it.

    On entry (rank 0): the lock, the leftovers of an interrupted run, the checkpoint to resume from
    (every rank resumes from the one rank 0 picked), `preflight` (the disk-space check) and the
    trackers. On a normal exit every rank waits for the others, and rank 0 renames `<stage>.partial/`
    to `<stage>/`. On an error or a signal the work folder stays only if it holds a checkpoint to
    resume from. Yields the folder and the checkpoint to resume from (None: a fresh start)."""
    recipe = loaded.recipe
    run = RunDir(loaded.run_dir(stage))
    resume_from = None
    if ranks.main:
        resume_from = run.begin(resume=recipe.resume == "auto", steps=getattr(recipe, section_of(stage)).steps)
        try:
            preflight(run)
            if recipe.train.report_to or recipe.train.tensorboard:
                run.start_trackers(loaded, stage)
        except UserError:
            run.abort()
            raise
    ranks.barrier()
    resume_from = ranks.gather(resume_from)[0]
    try:
        yield run, resume_from
    except BaseException:
        if ranks.main:
            run.abort()
        raise
    ranks.barrier()
    if ranks.main:
        run.commit(keep_checkpoint=recipe.checkpoint.keep_final)


class RunDir:
    """One stage's output: `<stage>/` when finished, `<stage>.partial/` while running (checkpoints
    live there), and `<stage>.lock` while a process owns it."""

    def __init__(self, path: Path):
        self.path = path
        self.work = path.with_name(path.name + ".partial")
        self.lock_file = path.with_name(path.name + ".lock")
        self.metrics_lines = 0
        self._lock_handle = None  # a held filelock.FileLock
        self._trackers: list[Any] = []  # accelerate GeneralTracker objects (train.report_to)

    def begin(self, resume: bool, steps: int | None = None) -> Path | None:
        """Lock the run and prepare the work directory; returns the checkpoint to resume from:
        an interrupted run's, else (to continue it to `steps`) the finished stage's last one."""
        from textgen_cli.training import checkpoint

        check_run_location(self.path)  # checked before data preparation too (cli); again here, cheaply
        self._lock()
        previous = self.path.with_name(self.path.name + ".previous")
        if previous.is_dir() and not self.path.exists():
            os.replace(previous, self.path)  # a crash in the middle of commit(): put the old result back
        try:
            if resume:
                self._remove_leftovers()
            found = (
                (checkpoint.newest_valid(self.work, log) if resume else checkpoint.latest(self.work))
                if self.work.is_dir()
                else None
            )
            if resume and found is not None:
                log(f"resuming from {found}")
                return found
            if resume and (continued := self._continue_finished(steps)) is not None:
                return continued
            if resume:
                log(f"nothing to resume in {self.work}; starting afresh")
            elif found is not None:
                log(
                    f"discarding the interrupted run in {self.work} (newest checkpoint {found.name}); use --resume to continue it instead"
                )
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
        from textgen_cli.training import checkpoint

        temporary_copies = [tmp for tmp in self.work.glob(".*.tmp") if tmp.is_file()]  # write_text_atomic's
        for leftover in temporary_copies:
            diskspace.remove(leftover)
        removed = checkpoint.remove_leftovers(self.work / checkpoint.CHECKPOINTS) + temporary_copies
        if removed:
            log(
                f"removed what an interrupted write left behind: {', '.join(str(p.relative_to(self.work)) for p in removed)}"
            )

    def _continue_finished(self, steps: int | None) -> Path | None:
        """--resume on a finished stage that kept its last checkpoint (checkpoint.keep_final) and is
        given more steps: start the work directory from it. The finished stage itself stays as it
        is until the continued one commits; its checkpoint files are hard links (never written
        again), its metrics.jsonl and TensorBoard events are copies (they get appended to)."""
        from textgen_cli.training import checkpoint

        finished = checkpoint.latest(self.path) if self.path.is_dir() else None
        if finished is None:
            return None
        step = int(json.loads((finished / "state.json").read_text(encoding="utf-8"))["step"])
        if steps is not None and step >= steps:
            key = f"{self.path.name.replace('-', '_')}.steps"
            raise UserError(
                f"'{self.path}' is a finished stage of {step} steps: --resume continues it only with more steps "
                f"(e.g. {key}={2 * step}); without --resume it is trained afresh"
            )
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        shutil.copytree(finished.parent, self.work / finished.parent.name, copy_function=_link_or_copy)
        for name in (METRICS_FILE, "tensorboard"):
            source = self.path / name
            if source.is_dir():
                shutil.copytree(source, self.work / name)
            elif source.is_file():
                shutil.copy2(source, self.work / name)
        log(f"continuing the finished stage {self.path} from step {step}" + (f" to {steps}" if steps else ""))
        return checkpoint.latest(self.work)

    def _lock(self) -> None:
        """A kernel lock (flock, through filelock) on `<stage>.lock`. The kernel releases it when
        the holder exits, however it exits (SIGKILL, power loss of a container), so a lock is never
        stale and nothing has to guess whether a recorded process still runs. The file also names
        its holder, for the message a second process gets."""
        from filelock import FileLock, Timeout

        lock = FileLock(self.lock_file, timeout=0, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            raise UserError(
                f"run directory '{self.path}' is in use by {_lock_owner(self.lock_file)} (lock file {self.lock_file}); wait for it or stop it"
            ) from None
        # the same inode, truncated in place: replacing the file would hand out a second lock
        with open(self.lock_file, "w", encoding="utf-8") as handle:
            handle.write(json.dumps({"pid": os.getpid(), "host": platform.node()}))
        self._lock_handle = lock
        debug(f"locked {self.lock_file}")

    def release(self) -> None:
        self.finish_trackers()
        if self._lock_handle is not None:
            # removed while still held, so no one else can be holding it; a process that opened
            # the old file meanwhile sees it unlinked and retries on a new one (filelock checks)
            self.lock_file.unlink(missing_ok=True)
            self._lock_handle.release()
            self._lock_handle = None

    def start_trackers(self, loaded: LoadedRecipe, stage: str) -> None:
        """Also send the metrics series, and once the hyperparameters (the resolved recipe,
        flattened), to the experiment trackers of `train.report_to`, through accelerate's tracker
        classes. metrics.jsonl stays the record; trackers get a copy of each of its lines.

        tensorboard writes `<run>/tensorboard/`, wandb `runs/<name>/wandb/` (WANDB_MODE=offline needs
        no account), mlflow the store that MLFLOW_TRACKING_URI names (its default: ./mlflow.db)."""
        from accelerate import PartialState
        from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker
        from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

        section = loaded.recipe.train
        names = list(dict.fromkeys([*section.report_to, *(["tensorboard"] if section.tensorboard else [])]))
        available = {
            "tensorboard": is_tensorboard_available,
            "wandb": is_wandb_available,
            "mlflow": is_mlflow_available,
        }
        for name in names:
            if not available[name]():
                raise UserError(
                    f"train.report_to: {name} needs its package, which is not installed: pip install 'textgen-cli[{name}]'"
                )
        PartialState()  # accelerate's trackers log through its logger, which needs the state
        for name in names:
            if name == "tensorboard":
                tracker = TensorBoardTracker("tensorboard", self.work)
            elif name == "wandb":
                # beside the stage, not in its work directory: that is renamed at the end, and
                # W&B prints the path to `wandb sync` an offline run from
                tracker = WandBTracker(loaded.name, name=stage, dir=str(self.path.parent))
            else:
                tracker = MLflowTracker(experiment_name=loaded.name, run_name=stage)
            tracker.start()
            self._trackers.append(tracker)
            tracker.store_init_configuration({"stage": stage, **flat_hyperparameters(loaded.to_dict())})
            debug(f"{stage}: reporting to {name}")

    def finish_trackers(self) -> None:
        for tracker in self._trackers:
            tracker.finish()
        self._trackers = []

    def resume_hint(self) -> str:
        from textgen_cli.training import checkpoint

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
        values = {key: value for key, value in record.items() if key != "step" and isinstance(value, (int, float))}
        for tracker in self._trackers:
            tracker.log(values, step=record["step"])

    def truncate_metrics(self, lines: int) -> None:
        """On resume: keep exactly the lines written before the checkpoint."""
        path = self.work / METRICS_FILE
        kept = path.read_text(encoding="utf-8").splitlines(keepends=True)[:lines] if path.exists() else []
        write_text_atomic(path, "".join(kept))
        self.metrics_lines = len(kept)

    def write_json(self, name: str, value: Any) -> None:
        write_text_atomic(self.work / name, json.dumps(value, indent=2) + "\n", then=self.resume_hint)

    def commit(self, keep_checkpoint: bool = True) -> None:
        """Swap the finished work in place of any previous result (begin() repairs a swap cut
        short by a crash), then drop the checkpoints but the last one, which `--resume` with more
        steps continues from (all of them with keep_checkpoint=False: checkpoint.keep_final)."""
        from textgen_cli.training import checkpoint

        self.finish_trackers()  # their files are in the work directory that is about to move
        previous = self.path.with_name(self.path.name + ".previous")
        if previous.exists():
            shutil.rmtree(previous)
        if self.path.exists():
            os.replace(self.path, previous)
        os.replace(self.work, self.path)
        shutil.rmtree(previous, ignore_errors=True)
        newest = checkpoint.latest(self.path) if keep_checkpoint else None
        if newest is not None:
            checkpoint.prune(newest.parent, keep_last=1, newest=newest)
        else:
            shutil.rmtree(self.path / checkpoint.CHECKPOINTS, ignore_errors=True)
        self.release()

    def abort(self) -> None:
        """A failed stage: keep the work directory only if it holds a checkpoint to resume from."""
        from textgen_cli.training import checkpoint

        if checkpoint.latest(self.work) is None:
            shutil.rmtree(self.work, ignore_errors=True)
        self.release()


def _lock_owner(lock_file: Path) -> str:
    """Who holds a lock, as the lock file names it: 'process PID' (with its host when it is
    another machine's), or 'another process' when the holder has not written its name yet."""
    try:
        owner = json.loads(lock_file.read_text(encoding="utf-8"))
        pid, host = int(owner["pid"]), owner.get("host")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
    return f"process {pid}" + (f" on host {host}" if host and host != platform.node() else "")


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(source, target)


def flat_hyperparameters(values: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """The resolved recipe as dotted keys with scalar values, which every tracker accepts:
    lists become JSON, null becomes "null"."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flat_hyperparameters(value, f"{prefix}{key}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[f"{prefix}{key}"] = value
        else:
            flat[f"{prefix}{key}"] = json.dumps(value)
    return flat


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
