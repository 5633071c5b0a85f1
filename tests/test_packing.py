"""Pretraining data preparation (textgen_cli.data.packing): the pool of tokenizer processes that large text
gets gives, block for block, what encoding in this process gives, which is what the plain
`tokenizer(texts)` call gave; errors and interruptions leave no worker and no partial file behind."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from harness import REPO, moby_lines
from textgen_cli.core.errors import UserError, WorkerDied
from textgen_cli.data import packing
from textgen_cli.data.packing import TextSource, file_digest, pack_blocks, packed_blocks

BLOCK = 32
# Special tokens inside the text, a blank record, non-ASCII text, long and one-character records.
ODD = [
    "an eos </s> and a <s> in the text",
    "<|user|> hello <|end|>",
    "   ",
    "café, naïve — “quoted” 🐋",
    "x",
    "word " * 300,
]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTGEN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(packing, "ROWS_PER_BATCH", 40)  # many batches: the tail carried across them, several in flight


def use_pool(monkeypatch) -> list:
    """Force the pool (two workers, whatever the size and the machine); returns a list of its uses."""
    calls: list = []
    pooled = packing._pooled
    monkeypatch.setattr(packing, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(packing, "usable_cores", lambda: 2)
    monkeypatch.setattr(packing, "_pooled", lambda *args: calls.append(args) or pooled(*args))
    return calls


def corpus(tmp_path, lines=600):
    texts = [line.rstrip("\n") for line in moby_lines(lines)]
    texts[7:7] = ODD
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts), encoding="utf-8")
    return path, texts


def source(path, start=0, stop=None):
    return TextSource(path, "text", start, stop, file_digest(path))


def reference(tokenizer, texts):
    """What the packer produced with the plain transformers call, before the pool existed."""
    kept = [text for text in texts if text.strip()]
    ids = tokenizer(kept, add_special_tokens=False)["input_ids"]
    blocks, _ = pack_blocks(ids, BLOCK, tokenizer.eos_token_id)
    return blocks, sum(len(row) + 1 for row in ids)


def no_leftovers(tmp_path):
    assert not list((tmp_path / "cache").rglob("*.tmp")), "a partial blocks file was left in the cache"
    assert not list((tmp_path / "cache").rglob("*.bin"))
    assert multiprocessing.active_children() == [], "tokenizer workers outlived the failure"


@pytest.mark.parametrize("start, stop", [(0, None), (50, 400)])
def test_pool_and_serial_give_the_reference_blocks(tmp_path, monkeypatch, tokenizer, small_batches, start, stop):
    path, texts = corpus(tmp_path)
    expected, expected_tokens = reference(tokenizer, texts[start:stop])
    serial = packed_blocks(source(path, start, stop), tokenizer, BLOCK)
    assert not serial.cached and serial.tokens == expected_tokens
    np.testing.assert_array_equal(serial.blocks, expected)

    monkeypatch.setenv("TEXTGEN_CACHE_DIR", str(tmp_path / "cache-pool"))
    calls = use_pool(monkeypatch)
    parallel = packed_blocks(source(path, start, stop), tokenizer, BLOCK)
    assert calls, "the pool was not used"
    assert not parallel.cached and parallel.tokens == serial.tokens and parallel.blocks.dtype == serial.blocks.dtype
    assert parallel.blocks.filename != serial.blocks.filename
    with open(parallel.blocks.filename, "rb") as a, open(serial.blocks.filename, "rb") as b:
        assert a.read() == b.read()
    assert multiprocessing.active_children() == []

    again = packed_blocks(source(path, start, stop), tokenizer, BLOCK)
    assert again.cached and again.tokens == serial.tokens
    np.testing.assert_array_equal(again.blocks, expected)


def test_processes_started_by_torchrun_share_the_cores(tmp_path, monkeypatch, tokenizer):
    """Two ranks on a 2-core machine each get one core: no pool of two workers per rank."""
    path, texts = corpus(tmp_path, lines=100)
    calls = use_pool(monkeypatch)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    packed = packed_blocks(source(path), tokenizer, BLOCK)
    assert not calls, "each of two local processes started a pool of two workers"
    np.testing.assert_array_equal(packed.blocks, reference(tokenizer, texts)[0])


def test_small_text_is_encoded_without_a_pool(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setattr(packing, "_pooled", lambda *args: pytest.fail("a pool was started for a few kilobytes"))
    path, _ = corpus(tmp_path, lines=100)
    assert path.stat().st_size < packing.PARALLEL_MIN_BYTES
    assert packed_blocks(source(path), tokenizer, BLOCK).tokens > 0


def test_bad_record_names_its_line_through_the_pool(tmp_path, monkeypatch, tokenizer, small_batches):
    path, texts = corpus(tmp_path)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines.insert(500, json.dumps({"text": 7}) + "\n")  # line 501, well after the first batches went to the workers
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(UserError) as serial:
        packed_blocks(source(path), tokenizer, BLOCK)
    assert f"{path}:501:" in str(serial.value) and "must be a string, got int" in str(serial.value)
    no_leftovers(tmp_path)

    calls = use_pool(monkeypatch)
    with pytest.raises(UserError) as parallel:
        packed_blocks(source(path), tokenizer, BLOCK)
    assert calls and str(parallel.value) == str(serial.value)
    no_leftovers(tmp_path)


def test_interrupt_and_worker_failure_leave_nothing_behind(tmp_path, monkeypatch, tokenizer, small_batches):
    path, _ = corpus(tmp_path)
    pool_calls = use_pool(monkeypatch)
    batches = TextSource.batches

    def interrupted(self, rows=None):
        for number, texts in enumerate(batches(self, rows)):
            if number == 6:
                raise KeyboardInterrupt
            yield texts

    monkeypatch.setattr(TextSource, "batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        packed_blocks(source(path), tokenizer, BLOCK)
    assert pool_calls
    no_leftovers(tmp_path)

    monkeypatch.setattr(TextSource, "batches", batches)
    encode = packing._encode

    def failing(core, texts):  # the workers are forked: they run this too
        if any("🐋" in text for text in texts):
            raise RuntimeError("the tokenizer failed")
        return encode(core, texts)

    monkeypatch.setattr(packing, "_encode", failing)
    with pytest.raises(RuntimeError, match="the tokenizer failed"):
        packed_blocks(source(path), tokenizer, BLOCK)
    no_leftovers(tmp_path)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pool is used on Linux only")
def test_a_worker_killed_by_the_oom_killer_is_a_clear_error(tmp_path, monkeypatch, tokenizer, small_batches, capsys):
    """The OOM killer SIGKILLs a worker: no raw BrokenProcessPool, but an error naming the file and
    memory, which the CLI prints without a traceback and exits 1 on; nothing is left behind."""
    import typer

    from textgen_cli.cli.guard import guarded

    path, _ = corpus(tmp_path)
    calls = use_pool(monkeypatch)
    batches = TextSource.batches
    killed: list[int] = []

    def oom_killer(self, rows=None):
        for number, texts in enumerate(batches(self, rows)):
            if number == 6:
                worker = multiprocessing.active_children()[0]
                os.kill(worker.pid, signal.SIGKILL)
                # not worker.exitcode: the pool's own thread may reap the dead worker first
                killed.append(worker.pid)
            yield texts

    monkeypatch.setattr(TextSource, "batches", oom_killer)
    with pytest.raises(WorkerDied) as died:
        packed_blocks(source(path), tokenizer, BLOCK)
    assert calls and len(killed) == 1
    message = str(died.value)
    assert (
        message.startswith(f"{path}: a tokenizer worker process was killed")
        and "out-of-memory killer" in message
        and "ran out of memory" in message
    )
    no_leftovers(tmp_path)

    with pytest.raises(typer.Exit) as exited:
        guarded(False, lambda: packed_blocks(source(path), tokenizer, BLOCK))
    assert exited.value.exit_code == 1
    err = capsys.readouterr().err
    assert (
        err.startswith(f"error: {path}: a tokenizer worker process was killed")
        and "Traceback" not in err
        and "BrokenProcessPool" not in err
    )


@pytest.mark.parametrize(
    "files, quota",
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        (
            {"cpu.max": "200000 100000\n", "cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"},
            2.0,
        ),  # v2 wins
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),
        ({"cpu,cpuacct/cpu.cfs_quota_us": "300000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 3.0),
        ({"cpu.max": "garbage\n"}, None),
        ({}, None),
    ],
)
def test_cgroup_cpu_quota_is_read_from_v2_or_v1_files(tmp_path, files, quota):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert packing.cgroup_cpu_quota(tmp_path) == quota


@pytest.mark.parametrize(
    "cpu_max, cores", [("150000 100000", 2), ("50000 100000", 1), ("1600000 100000", 8), ("max 100000", 8)]
)
def test_usable_cores_honours_the_cgroup_quota(tmp_path, monkeypatch, cpu_max, cores):
    """8 cores in the affinity mask: a quota of 1.5 cores gives 2 workers, half a core 1, 16 cores 8."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    assert packing.usable_cores(tmp_path) == cores


CTRL_C_CHILD = textwrap.dedent(
    """
    import signal, sys, time
    from pathlib import Path
    # A shell starts a program with Ctrl-C at its default. A child inherits an ignored SIGINT from its
    # parent, and Python then leaves it ignored: if the test process runs with it ignored (seen once in
    # a full CI run: the packer ran to the end, exit 0), put the default back, and say so.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        print("note: SIGINT was ignored on entry; restored", file=sys.stderr)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path.insert(0, sys.argv[1])
    from textgen_cli.data import packing
    from textgen_cli.data.packing import TextSource, file_digest, packed_blocks
    from textgen_cli.data.tokenizer import load_tokenizer

    packing.PARALLEL_MIN_BYTES, packing.ROWS_PER_BATCH = 0, 40
    packing.usable_cores = lambda: 2
    batches = TextSource.batches

    def slow(self, rows=None):
        for number, texts in enumerate(batches(self, rows)):
            if number == 6:
                print("RUNNING", flush=True)  # the workers have had batches for a while
            time.sleep(0.05 if number >= 6 else 0)
            yield texts

    TextSource.batches = slow
    path = Path(sys.argv[2])
    packed_blocks(TextSource(path, "text", 0, None, file_digest(path)), load_tokenizer(Path(sys.argv[3])), 32)
    print("FINISHED", flush=True)
    """
)


def start_slow_packer(tmp_path, tokenizer) -> subprocess.Popen:
    """A process (in a session of its own) packing 2,000 lines through the pool, slowly: it prints
    RUNNING once the workers are busy."""
    path, _ = corpus(tmp_path, lines=2000)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    env = {**os.environ, "TEXTGEN_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.Popen(
        [sys.executable, "-c", CTRL_C_CHILD, str(REPO), str(path), str(tmp_path / "tokenizer")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pool is used on Linux only")
def test_ctrl_c_stops_the_workers_quietly(tmp_path, tokenizer):
    """A terminal's Ctrl-C reaches the whole process group: the workers ignore it and the main process
    stops them, leaving no partial file and one traceback (its own)."""
    child = start_slow_packer(tmp_path, tokenizer)
    try:
        assert child.stdout.readline().strip() == "RUNNING"
        os.killpg(child.pid, signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    assert child.returncode == -signal.SIGINT, err
    assert "FINISHED" not in out and err.count("Traceback") == 1 and err.rstrip().endswith("KeyboardInterrupt"), err
    with pytest.raises(ProcessLookupError):
        os.killpg(child.pid, 0)  # nothing of its process group is left
    assert not list((tmp_path / "cache").rglob("*.tmp")) and not list((tmp_path / "cache").rglob("*.bin"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pool is used on Linux only")
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_terminated_packer_leaves_no_worker_behind(tmp_path, tokenizer, how):
    """torchrun and schedulers stop a job with SIGTERM (to the main process only): it becomes an
    exception that stops the pool and deletes the partial file. After a SIGKILL, which nothing can
    catch, the workers are told by the kernel that their parent died, and exit."""
    child = start_slow_packer(tmp_path, tokenizer)
    try:
        assert child.stdout.readline().strip() == "RUNNING"
        child.send_signal(getattr(signal, how))  # the main process alone, not its group
        out, err = child.communicate(timeout=60)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(child.pid, 0)  # workers share the child's process group
            except ProcessLookupError:
                break
            time.sleep(0.1)
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)
            leftover = True
        except ProcessLookupError:
            leftover = False
    assert not leftover, "tokenizer workers outlived the packer"
    if how == "SIGTERM":
        assert child.returncode == 143 or "interrupted while tokenizing" in err, err
        assert "nothing was cached" in err
        assert not list((tmp_path / "cache").rglob("*.tmp")) and not list((tmp_path / "cache").rglob("*.bin"))
