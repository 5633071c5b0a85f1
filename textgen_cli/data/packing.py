"""Pretraining data preparation: stream a text corpus through the tokenizer and pack it into
fixed-size blocks, cached on disk.

The corpus is never held in memory: `datasets` keeps it as memory-mapped Arrow, batches of rows go
through the Rust tokenizer, and full blocks are appended to a binary file that is then memory-mapped.
The result is cached under the textgen cache folder, keyed by the file's content, the tokenizer and
the block size: a second run with the same inputs opens the cached blocks without tokenizing anything.

On Linux, text of `PARALLEL_MIN_BYTES` or more is tokenized by a pool of worker processes, one per
usable core (at most `MAX_WORKERS`), forked so that they start at once and re-import nothing: each
builds its own Rust tokenizer from the tokenizer's JSON (it never touches torch or transformers),
encodes whole batches on one thread and sends back each batch's ids as two flat numpy arrays (ids
end to end, lengths). This process reads and checks the rows, hands out the batches and packs the
results in order, with at most `IN_FLIGHT_PER_WORKER` batches per worker outstanding, so memory stays
bounded. That gives the same blocks as encoding here, which is what smaller text (and every platform
but Linux) gets: the pool's start-up would cost more than it saves, and the Rust tokenizer encodes a
batch on several threads of its own (though converting its output to Python holds the GIL).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import json
import math
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from textgen_cli.core import diskspace
from textgen_cli.core.errors import Interrupted, UserError, WorkerDied
from textgen_cli.core.files import write_text_atomic
from textgen_cli.data.readers import _line_of_row, file_format, load_rows, local_file
from textgen_cli.data.tokenizer import cache_dir

if TYPE_CHECKING:
    import datasets

FORMAT_VERSION = "1"
ROWS_PER_BATCH = 2000
# Text (bytes: the source's share of its file) from which a pool of worker processes tokenizes; below
# it the pool costs more than it saves (measured on 2 cores: docs/performance.md, "Data preparation").
PARALLEL_MIN_BYTES = 8 * 2**20
MAX_WORKERS = 8
IN_FLIGHT_PER_WORKER = 2  # batches submitted and not yet packed, per worker


def pack_blocks(
    token_lists: Sequence[Sequence[int]], block_size: int, eos_id: int, carry: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Join documents with eos (after the `carry` of a previous call) and cut into full blocks.
    Returns the blocks and the ragged tail, which the next call continues from (or is dropped)."""
    lead = 0 if carry is None else len(carry)
    stream = np.empty(lead + sum(len(ids) + 1 for ids in token_lists), dtype=np.int64)
    if carry is not None:
        stream[:lead] = carry
    position = lead
    for ids in token_lists:
        stream[position : position + len(ids)] = ids
        stream[position + len(ids)] = eos_id
        position += len(ids) + 1
    n_blocks = len(stream) // block_size
    return stream[: n_blocks * block_size].reshape(n_blocks, block_size), stream[n_blocks * block_size :]


def file_digest(path: Path, chunk_size: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def tokenizer_digest(tokenizer) -> str:
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()


def _can_fork_workers() -> bool:
    import multiprocessing

    # elsewhere fork is unsafe (macOS) or absent (Windows); a daemonic process may not have children
    return sys.platform.startswith("linux") and not multiprocessing.current_process().daemon


def usable_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a container's
    `--cpus`), which the affinity does not show: more workers than the quota only take turns."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores


def cgroup_cpu_quota(root: Path) -> float | None:
    """CPUs' worth of time per period that the cgroup allows (1.5 = one and a half cores), or None
    for no quota: cgroup v2's `cpu.max` ("QUOTA PERIOD", QUOTA "max" for none), else cgroup v1's
    `cpu.cfs_quota_us` (-1 for none) over `cpu.cfs_period_us`. Unreadable or odd files: no quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else _positive_ratio(quota, period)
    except (OSError, ValueError):
        pass
    for folder in (root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu"):
        try:
            return _positive_ratio(
                (folder / "cpu.cfs_quota_us").read_text(), (folder / "cpu.cfs_period_us").read_text()
            )
        except (OSError, ValueError):
            continue
    return None


def _positive_ratio(quota: str, period: str) -> float | None:
    quota_us, period_us = int(quota.strip()), int(period.strip())
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


@dataclass
class TextSource:
    """A slice of rows of one local text file: what gets tokenized."""

    path: Path
    text_field: str
    start: int  # first row
    stop: int | None  # one past the last row (None: to the end)
    digest: str

    def rows(self) -> datasets.Dataset:
        return self._rows()[0]

    def _rows(self) -> tuple[datasets.Dataset, float]:
        """The rows, and their share of the file's rows."""
        rows = load_rows(self.path)
        stop = len(rows) if self.stop is None else min(self.stop, len(rows))
        share = max(0, stop - self.start) / len(rows)
        return (rows.select(range(self.start, stop)) if (self.start, stop) != (0, len(rows)) else rows), share

    @property
    def field(self) -> str:
        return "text" if file_format(self.path) == "text" else self.text_field

    def batches(self, rows: datasets.Dataset | None = None) -> Iterator[list[str]]:
        """Non-empty texts in batches; a non-string value is an error naming its line."""
        rows = self.rows() if rows is None else rows
        if self.field not in rows.column_names:
            raise UserError(
                f"{self.path}: records have no field '{self.field}' (set by data.pretrain.text_field); fields found: {', '.join(rows.column_names)}"
            )
        offset = self.start
        for batch in rows.select_columns([self.field]).iter(batch_size=ROWS_PER_BATCH):
            texts = batch[self.field]
            for index, text in enumerate(texts):
                if not isinstance(text, str):
                    raise UserError(
                        f"{_line_of_row(self.path, offset + index)}: field '{self.field}' must be a string, got {type(text).__name__}"
                    )
            offset += len(texts)
            yield [text for text in texts if text.strip()]

    def key(self) -> str:
        return f"{self.digest}|{self.text_field}|{self.start}|{self.stop}"


def split_sources(
    path: str, text_field: str, max_rows: int | None, validation: str | None, holdout_fraction: float
) -> tuple[TextSource, TextSource, int]:
    """The training and validation text sources; without a validation file the last
    `holdout_fraction` of the training rows are held out. Returns the held-out row count (0 if none)."""
    train_path = local_file(path)  # an hf: dataset becomes a cached parquet file (readers.py)
    rows = len(load_rows(train_path, max_rows))
    train_digest = file_digest(train_path)
    if validation:
        val_path = local_file(validation)
        val_rows = len(load_rows(val_path, max_rows))
        return (
            TextSource(train_path, text_field, 0, rows, train_digest),
            TextSource(val_path, text_field, 0, val_rows, file_digest(val_path)),
            0,
        )
    cut = max(1, int(rows * holdout_fraction))
    if rows - cut < 1:
        raise UserError(
            f"{train_path}: only {rows} records; too few to hold out a validation part (set data.pretrain.validation)"
        )
    return (
        TextSource(train_path, text_field, 0, rows - cut, train_digest),
        TextSource(train_path, text_field, rows - cut, rows, train_digest),
        cut,
    )


@dataclass
class Packed:
    blocks: np.ndarray  # (n_blocks, block_size), memory-mapped
    tokens: int  # tokens in the source, eos separators included
    cached: bool


def packed_blocks(source: TextSource, tokenizer, block_size: int) -> Packed:
    """Blocks of `block_size` tokens: documents joined by eos, the ragged tail dropped. Cached."""
    eos = tokenizer.eos_token_id
    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max else np.int32
    tokenizer_json = tokenizer.backend_tokenizer.to_str()
    tokenizer_key = hashlib.sha256(tokenizer_json.encode()).hexdigest()  # = tokenizer_digest(tokenizer)
    key = hashlib.sha256(
        f"{FORMAT_VERSION}|{source.key()}|{tokenizer_key}|{block_size}|{eos}|{np.dtype(dtype).name}".encode()
    ).hexdigest()[:24]
    folder = cache_dir() / "blocks"
    data_file, meta_file = folder / f"{key}.bin", folder / f"{key}.json"
    if data_file.is_file() and meta_file.is_file():
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        return Packed(_open(data_file, dtype, meta["n_blocks"], block_size), meta["tokens"], cached=True)

    rows, share = source._rows()
    text_bytes = source.path.stat().st_size * share
    # under torchrun every process on this machine packs at once: they share the cores
    cores = usable_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    workers = min(cores, MAX_WORKERS) if text_bytes >= PARALLEL_MIN_BYTES and _can_fork_workers() else 1
    # what `tokenizer(texts, add_special_tokens=False)` does, minus the Python-side conversions
    split_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{key}.{os.getpid()}.tmp"
    carry = np.empty(0, dtype=np.int64)
    tokens = n_blocks = 0
    attempted = batches_packed = 0  # bytes handed to write(), the failing write included; batches
    total_batches = max(1, -(-len(rows) // ROWS_PER_BATCH))

    def needed() -> int | None:
        """The whole file, extrapolated from the batches packed so far."""
        return int(attempted * total_batches / batches_packed) if batches_packed else None

    then = "the partial file was removed and nothing was cached: free some space (or set TEXTGEN_CACHE_DIR to a disk with room), then run again"
    try:
        with diskspace.writing("the packed-blocks cache", data_file, needed, then, partial=tmp):
            with (
                _termination_raises(source),
                tmp.open("wb") as out,
                _encoded(source.batches(rows), tokenizer_json, split_special_tokens, workers) as encoded,
            ):
                for ids, lengths in encoded:
                    tokens += int(lengths.sum()) + len(lengths)
                    blocks, carry = pack_blocks(np.split(ids, np.cumsum(lengths[:-1])), block_size, eos, carry)
                    data = blocks.astype(dtype).tobytes()
                    attempted, batches_packed = attempted + len(data), batches_packed + 1
                    out.write(data)
                    n_blocks += len(blocks)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, data_file)
        try:
            write_text_atomic(
                meta_file,
                json.dumps(
                    {"n_blocks": n_blocks, "tokens": tokens, "block_size": block_size, "source": str(source.path)}
                ),
                then=then,
            )
        except BaseException:
            data_file.unlink(missing_ok=True)  # blocks without their description would never be used: free their space
            raise
    finally:
        tmp.unlink(missing_ok=True)
    return Packed(_open(data_file, dtype, n_blocks, block_size), tokens, cached=False)


Encoded = tuple[np.ndarray, np.ndarray]  # one batch: its documents' ids end to end (int32) and their lengths


def _backend(tokenizer_json: str, split_special_tokens: bool):
    """A private copy of the Rust tokenizer, set up as `transformers` sets it up for a plain call."""
    from tokenizers import Tokenizer

    core = Tokenizer.from_str(tokenizer_json)
    core.no_truncation()
    core.no_padding()
    core.encode_special_tokens = split_special_tokens
    return core


def _encode(core, texts: list[str]) -> Encoded:
    ids = [encoding.ids for encoding in core.encode_batch_fast(texts, add_special_tokens=False)]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    return np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum())), lengths


@contextlib.contextmanager
def _encoded(
    batches: Iterable[list[str]], tokenizer_json: str, split_special_tokens: bool, workers: int
) -> Iterator[Iterator[Encoded]]:
    """The batches' encodings, in order: here, or by `workers` processes when there are two or more.
    Leaving the block, normally or not, stops the workers."""
    if workers < 2:
        core = _backend(tokenizer_json, split_special_tokens)
        yield (_encode(core, texts) for texts in batches if texts)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_start_worker,
        initargs=(tokenizer_json, split_special_tokens, os.getpid()),
    )
    try:
        with _quiet_fork():
            pool.submit(_started)  # the first submission forks every worker: do it here
        yield _pooled(pool, batches, workers * IN_FLIGHT_PER_WORKER)
    except BrokenProcessPool as exc:
        # a worker died without a Python exception: on Linux, almost always the out-of-memory killer
        raise WorkerDied(
            f"a tokenizer worker process was killed while tokenizing (most likely by the kernel's out-of-memory killer: "
            f"this machine ran out of memory, with {workers} worker processes); nothing was cached. Free some memory and run again"
        ) from exc
    finally:
        # Running batches finish (a fraction of a second), queued ones are dropped; then the workers exit.
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _termination_raises(source: TextSource) -> Iterator[None]:
    """SIGTERM (what torchrun and schedulers send) becomes an exception while packing, so that the
    worker pool is shut down and the partial blocks file deleted instead of left behind; a worker
    that died is reported naming the file."""
    if threading.current_thread() is not threading.main_thread():
        with _naming_the_file(source):
            yield
        return

    def stop(signum: int, frame) -> None:
        raise Interrupted(f"interrupted while tokenizing {source.path}; nothing was cached", 128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with _naming_the_file(source):
            yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _naming_the_file(source: TextSource) -> Iterator[None]:
    try:
        yield
    except WorkerDied as exc:
        raise WorkerDied(f"{source.path}: {exc}") from exc.__cause__


def _pooled(pool, batches: Iterable[list[str]], in_flight: int) -> Iterator[Encoded]:
    pending: deque = deque()
    for texts in batches:
        if texts:
            pending.append(pool.submit(_encode_in_worker, texts))
            if len(pending) >= in_flight:
                yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


@contextlib.contextmanager
def _quiet_fork() -> Iterator[None]:
    """Around forking the workers: a Ctrl-C is acted on once they have all started (half-started, the
    pool could not be shut down), `tokenizers` does not warn that it was forked after using its threads
    (it was told not to use them: TOKENIZERS_PARALLELISM), and Python 3.12+ does not warn that forking
    a process with threads (torch's, the tokenizer's) may deadlock the child: the workers use nothing
    of those threads' libraries but a fresh tokenizer of their own and numpy."""
    import warnings

    received: list[int] = []
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGINT)
        if previous is not None:  # None: a handler not set from Python, which could not be put back
            signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    gc.freeze()  # the workers' garbage collector leaves this process's objects alone, so their pages stay shared
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*fork\(\) may lead to deadlocks", category=DeprecationWarning)
            yield
    finally:
        gc.unfreeze()
        if parallelism is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = parallelism
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
            if received:
                signal.raise_signal(signal.SIGINT)


_worker_core = None


def _start_worker(tokenizer_json: str, split_special_tokens: bool, parent: int) -> None:
    global _worker_core
    signal.signal(
        signal.SIGINT, signal.SIG_IGN
    )  # Ctrl-C reaches the whole process group: the main process stops the pool
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler, inherited through fork
    _die_with_parent(parent)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker: the pool is the parallelism
    _worker_core = _backend(tokenizer_json, split_special_tokens)


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGTERM this worker when the process that forked it dies, however it dies
    (SIGKILL included): an orphaned worker would otherwise wait for work forever."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # no prctl: the pool's own shutdown is all there is
        pass
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(1)


def _started() -> int:
    return os.getpid()


def _encode_in_worker(texts: list[str]) -> Encoded:
    return _encode(_worker_core, texts)


def _open(path: Path, dtype, n_blocks: int, block_size: int) -> np.ndarray:
    if n_blocks == 0:
        return np.zeros((0, block_size), dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(n_blocks, block_size))
