"""The suite's one way to write a tiny recipe and one way to run `textgen`.

- `recipe()` / `write_recipe()`: a tiny recipe (1-layer model, 400-token vocabulary, CPU) with the
  sections a test changes given as keyword arguments.
- `textgen()`: the installed console script in a fresh process, offline: exactly what a user runs.
  `ok()` and `usage_error()` check how it ended.
- `in_process()`: the same Typer app called in this process (no interpreter start, ~4 s cheaper per
  run) for tests that need no process of their own; conftest's `textgen_here` fixture wraps it.
- `spawn()`: a `textgen` left running in the background, for tests that signal or SIGKILL it.
- `assert_same_training()`: two runs logged the same losses and ended with the same weights.

Every process started here gets `cli_env()`: no network (HF_HUB_OFFLINE and friends), one intra-op
thread (tiny models gain nothing from more, and on a shared 2-core machine threads that contend make
a run several times slower), and optionally a cache folder of its own.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "recipes"
FAMILIES = ("chatgpt", "sora")

# Set in this process by conftest and in every process started here: no network, quiet libraries.
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
}

# ---------------------------------------------------------------------------------- recipes

OMIT = object()  # a value in recipe(...) or merged(...): leave that key or section out

# What every test recipe starts from; each test adds its data, training settings and steps.
TINY = {
    "stages": ["pretrain", "finetune"],
    "model": {"family": "chatgpt", "layers": 1, "hidden": 32, "heads": 2, "ffn": 64, "context": 64},
    "tokenizer": {"vocab_size": 400},
}


def merged(base: dict, changes: dict) -> dict:
    """`base` with `changes`: a dict merged into a dict key by key (recursively), a value set to OMIT
    removed, anything else replaced."""
    result = dict(base)
    for key, value in changes.items():
        if value is OMIT:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def recipe(family: str = "chatgpt", **sections: Any) -> dict:
    """TINY for `family`, with each keyword a top-level section: a dict is merged into the default
    section key by key (`model={"context": 32}` changes the context only; a key set to OMIT is left
    out), anything else replaces the section (`stages=["pretrain"]`); a section set to OMIT is left out."""
    return merged({**TINY, "model": {**TINY["model"], "family": family}}, sections)


def end_to_end_recipe(family: str) -> dict:
    """The recipe of conftest's session-wide tiny runs (`trained`): both stages, 40 steps each, data
    paths relative to the recipe file."""
    return recipe(
        family,
        description=f"tiny {family} for the test suite",
        model={"dropout": 0.1},
        data={
            "pretrain": {"train": "data/pretrain-train.txt", "validation": "data/pretrain-val.txt"},
            "finetune": {
                "task": "pairs",
                "train": "data/finetune-train.jsonl",
                "validation": "data/finetune-val.jsonl",
            },
        },
        prompt={"system": "Modern English."},
        train={
            "seed": 7,
            "device": "cpu",
            "batch_size": 8,
            "lr": 3.0e-3,
            "warmup_steps": 5,
            "log_every": 5,
            "eval_every": 20,
            "eval_batches": 2,
        },
        pretrain={"steps": 40},
        finetune={"steps": 40},
        # generation within the tiny context, so that training tests test training only (test_recipe
        # checks that small contexts validate with the defaults)
        generate={"max_new_tokens": 8},
    )


def save_recipe(path: Path, values: dict) -> Path:
    """A recipe's values written as YAML to `path` (relative data paths in it resolve against its folder)."""
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return path


def write_recipe(path: Path, family: str = "chatgpt", **sections: Any) -> Path:
    """recipe(family, **sections) written to `path`."""
    return save_recipe(path, recipe(family, **sections))


def moby_lines(n: int, split: str = "train") -> list[str]:
    """The first `n` lines of the shipped Moby-Dick text (newlines kept)."""
    with (SHIPPED / "data" / "moby-dick" / f"{split}.txt").open(encoding="utf-8") as handle:
        return [next(handle) for _ in range(n)]


def shortest_verse_pairs() -> list[str]:
    """The shipped verse pairs (JSONL lines), shortest first: the first ~240 mostly fit a 64-token context."""
    with (SHIPPED / "data" / "bible-modern" / "train.jsonl").open(encoding="utf-8") as handle:
        rows = handle.readlines()
    return sorted(rows, key=lambda line: (lambda r: len(r["source"]) + len(r["target"]))(json.loads(line)))


def write_tiny_pretrain(folder: Path, train_lines: int = 300, val_lines: int = 40, **sections: Any) -> Path:
    """folder/tiny.yaml: a 1-layer `chatgpt` pretraining recipe (context 32, 40 steps, a checkpoint
    every 10) on Moby-Dick lines written beside it; keyword arguments change sections as in recipe()."""
    (folder / "train.txt").write_text("".join(moby_lines(train_lines)), encoding="utf-8")
    (folder / "val.txt").write_text("".join(moby_lines(val_lines, "validation")), encoding="utf-8")
    defaults = {
        "stages": ["pretrain"],
        "model": {"context": 32, "dropout": 0.0},
        "data": {"pretrain": {"train": "train.txt", "validation": "val.txt"}},
        "train": {"batch_size": 8, "log_every": 5, "eval_every": 20, "eval_batches": None},
        "pretrain": {"steps": 40},
        "checkpoint": {"every": 10},
    }
    return write_recipe(folder / "tiny.yaml", "chatgpt", **merged(defaults, sections))


# ---------------------------------------------------------------------------------- running textgen


def textgen_exe() -> str:
    """The installed console script (what a user runs), not `python -m`."""
    candidate = Path(sys.executable).parent / "textgen"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("textgen")
    assert found, f"the textgen entry point is not installed beside {sys.executable}"
    return found


def cli_env(cache: Path | None = None, **changes: str) -> dict[str, str]:
    """This process's environment, offline and on one thread; `cache`: a TEXTGEN_CACHE_DIR of its own."""
    env = {**os.environ, **OFFLINE, "OMP_NUM_THREADS": "1"}
    if cache is not None:
        env["TEXTGEN_CACHE_DIR"] = str(cache)
    env.update(changes)
    return env


def textgen(
    args: list[str],
    cwd: Path | None = None,
    *,
    stdin: str | None = None,
    cache: Path | None = None,
    env: dict[str, str] | None = None,
    prefix: tuple[str, ...] = (),
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """`textgen ARGS` through the installed entry point in `cwd` (default: here), with cli_env(cache), or with exactly
    `env` where a test needs another environment; `prefix` runs it under another command (unshare)."""
    return subprocess.run(
        [*prefix, textgen_exe(), *args],
        cwd=cwd,
        env=cli_env(cache) if env is None else env,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """A run that exited 0 without a traceback (else the failure shows the ends of both streams)."""
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"
    )
    assert "Traceback" not in result.stderr
    return result


def usage_error(result: subprocess.CompletedProcess, *words: str) -> subprocess.CompletedProcess:
    """A user's mistake: exit 2, an `error: ` line on stderr containing every one of `words`, no traceback."""
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert result.stderr.startswith("error: ") or "\nerror: " in result.stderr, result.stderr[-2000:]
    for word in words:
        assert word in result.stderr, (word, result.stderr[-2000:])
    return result


@dataclass
class Result:
    """How an in-process run ended: the exit code and what it wrote."""

    rc: int
    out: str
    err: str


def in_process(args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> Result:
    """The CLI's Typer app (what the entry point calls) in this process, from `cwd`."""
    from textgen_cli.cli.app import app

    monkeypatch.chdir(cwd)
    capsys.readouterr()
    rc = app(args=list(args), prog_name="textgen", standalone_mode=False)
    out, err = capsys.readouterr()
    return Result(0 if rc is None else rc, out, err)


# ---------------------------------------------------------------------------------- background runs

_LIVE: list[subprocess.Popen] = []
_COUNTER = itertools.count()


class Proc:
    """A running `textgen`: stdout and stderr go to files (no pipe can fill up and block it)."""

    pid: int
    err_path: Path

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(encoding="utf-8", errors="replace")

    def poll(self) -> int | None:
        raise NotImplementedError

    def wait(self, timeout: float = 300) -> int:
        deadline = time.monotonic() + timeout
        while (rc := self.poll()) is None:
            if time.monotonic() > deadline:
                self.send(signal.SIGKILL)
                raise AssertionError(f"textgen ran over {timeout}s; stderr:\n{self.stderr}")
            time.sleep(0.01)
        return rc

    def send(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)


class EntryPointProc(Proc):
    """The installed `textgen` console script in a fresh interpreter: exactly what a user runs."""

    def __init__(self, args: list[str], cwd: Path, out: Path, err: Path):
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            self.popen = subprocess.Popen(
                [textgen_exe(), *args], cwd=cwd, env=cli_env(), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
            )
        _LIVE.append(self.popen)
        self.pid, self.err_path = self.popen.pid, err

    def poll(self) -> int | None:
        return self.popen.poll()


# A fork server: imports torch, transformers and textgen once, then forks one child per run; each
# child runs `textgen_cli.cli.app.app` (what the `textgen` script calls) with its own cwd and files,
# and exits with the CLI's exit code. It saves the ~4 s interpreter start of every run (13 runs in
# the reliability tests), which matters on a 2-core machine. Nothing of torch runs in the server
# before it forks.
FORK_SERVER = r"""
import json, os, select, signal, sys, time, traceback
import torch, transformers, datasets, accelerate
import transformers.models.gpt2.modeling_gpt2, transformers.models.bart.modeling_bart
from textgen_cli.cli import app as cli
from textgen_cli.training import checkpoint
from textgen_cli.training import finetune
from textgen_cli.training import pretrain
from textgen_cli.training import train

def child(spec):
    code = 1
    try:
        os.chdir(spec["cwd"])
        for fd, name, flags in ((0, os.devnull, os.O_RDONLY), (1, spec["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), (2, spec["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
            os.dup2(os.open(name, flags, 0o644), fd)
        try:
            cli.app(args=spec["args"], prog_name="textgen")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

def report(*words):
    sys.stdout.write(" ".join(map(str, words)) + "\n")
    sys.stdout.flush()

children, pending, reading = {}, b"", True
report("ready")
while reading or children:
    if reading and select.select([0], [], [], 0.005)[0]:
        chunk = os.read(0, 65536)
        reading = bool(chunk)
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            spec = json.loads(line)
            pid = os.fork()
            if pid == 0:
                child(spec)
            children[pid] = spec["id"]
            report("started", spec["id"], pid)
    elif not reading:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)
    while children:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            break
        report("exited", children.pop(pid), os.waitstatus_to_exitcode(status))
"""


class ForkServer:
    def __init__(self):
        self.popen = subprocess.Popen(
            [sys.executable, "-c", FORK_SERVER], cwd=REPO, env=cli_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        _LIVE.append(self.popen)
        self.pids: dict[int, int] = {}
        self.codes: dict[int, int] = {}
        self.changed = threading.Condition()
        self.ids = itertools.count()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            word, *rest = line.decode().split()
            with self.changed:
                if word == "started":
                    self.pids[int(rest[0])] = int(rest[1])
                elif word == "exited":
                    self.codes[int(rest[0])] = int(rest[1])
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def run(self, args: list[str], cwd: Path, out: Path, err: Path) -> ForkedProc:
        n = next(self.ids)
        spec = {"id": n, "args": args, "cwd": str(cwd), "out": str(out), "err": str(err)}
        self.popen.stdin.write((json.dumps(spec) + "\n").encode())
        self.popen.stdin.flush()
        # the first run waits for the server's imports: minutes on a starved machine (a dead server
        # ends the wait at once)
        with self.changed:
            self.changed.wait_for(lambda: n in self.pids or self.popen.poll() is not None, timeout=600)
        assert self.popen.poll() is None, "the fork server died (see the captured stderr)"
        assert n in self.pids, "the fork server has not started the run in 600 s"
        return ForkedProc(self, n, self.pids[n], err)

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.stdin.close()
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()


class ForkedProc(Proc):
    def __init__(self, server: ForkServer, n: int, pid: int, err: Path):
        self.server, self.n, self.pid, self.err_path = server, n, pid, err

    def poll(self) -> int | None:
        return self.server.codes.get(self.n)


_SERVER: list[ForkServer] = []


def spawn(args: list[str], cwd: Path, logs: Path, entry_point: bool = False) -> Proc:
    """Start `textgen ARGS` in `cwd`, its stdout and stderr in files under `logs`: through the
    installed entry point, or forked from the fork server (started on first use)."""
    logs.mkdir(exist_ok=True)
    n = next(_COUNTER)
    out, err = logs / f"{n}.out", logs / f"{n}.err"
    if entry_point:
        return EntryPointProc(args, cwd, out, err)
    if not _SERVER:
        _SERVER.append(ForkServer())
    return _SERVER[0].run(args, cwd, out, err)


def stop_background_runs() -> None:
    """Close the fork server and kill whatever spawn() started that still runs."""
    for server in _SERVER:
        server.close()
    _SERVER.clear()
    for popen in _LIVE:
        if popen.poll() is None:
            popen.kill()
            popen.wait()
    _LIVE.clear()


def logged_step(metrics: Path) -> int:
    """The highest step in a metrics.jsonl being written (-1 before the first line)."""
    try:
        text = metrics.read_text(encoding="utf-8")
    except FileNotFoundError:
        return -1
    best = -1
    for line in text.splitlines():
        try:
            best = max(best, int(json.loads(line)["step"]))
        except (ValueError, KeyError, TypeError):
            pass  # a line being written
    return best


def wait_until(condition: Callable[[], bool], proc: Proc, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"textgen exited with {proc.poll()} before {what}; stderr:\n{proc.stderr}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; stderr:\n{proc.stderr}")
        time.sleep(0.005)


# ---------------------------------------------------------------------------------- comparing runs

TIMING_KEYS = ("elapsed_s", "tokens_per_s")  # wall-clock fields: the only ones allowed to differ


def read_metrics(stage_dir: Path) -> list[dict]:
    """A stage's metrics.jsonl without its wall-clock fields."""
    lines = (stage_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines if line.strip()]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_training(reference: Path, other: Path, min_lines: tuple[int, int]) -> None:
    """Every logged loss, validation loss, lr, grad norm and token count equal, and the final weights
    equal byte for byte. `min_lines`: the fewest loss and validation lines the reference must have
    (so that equal means something)."""
    expected, got = read_metrics(reference), read_metrics(other)
    assert sum("loss" in line for line in expected) >= min_lines[0]
    assert sum("val_loss" in line for line in expected) >= min_lines[1]
    assert [line["step"] for line in got] == [line["step"] for line in expected], (
        "metrics.jsonl steps differ (lost or repeated lines)"
    )
    assert got == expected
    assert sha256(other / "final" / "model.safetensors") == sha256(reference / "final" / "model.safetensors"), (
        "final weights differ"
    )


def tree_snapshot(root: Path) -> dict[str, str]:
    """Every file's hash and every directory under `root`: equal snapshots mean nothing changed."""
    return {str(p.relative_to(root)): sha256(p) if p.is_file() else "<dir>" for p in sorted(root.rglob("*"))}


# ---------------------------------------------------------------------------------- the reliability workspace
# Used by the tests of what survives a stopped, killed or failing run (test_resume, test_crash_safety,
# test_locks, test_divergence, test_bad_input, test_security); its fixtures are in conftest.

PRETRAIN_STEPS = 60
FINETUNE_STEPS = 40
CONTEXT = 64
CHECKPOINT_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json")


def reliability_recipe(family: str) -> dict:
    """Both stages, a checkpoint every 10 steps (two kept); data paths relative to the recipe file."""
    return recipe(
        family,
        data={
            "pretrain": {"train": "data/train.txt", "validation": "data/val.txt"},
            "finetune": {"task": "pairs", "train": "data/ft-train.jsonl", "validation": "data/ft-val.jsonl"},
        },
        train={
            "device": "cpu",
            "batch_size": 8,
            "warmup_steps": 10,
            "log_every": 5,
            "eval_every": 10,
            "eval_batches": 2,
        },
        pretrain={"steps": PRETRAIN_STEPS},
        finetune={"steps": FINETUNE_STEPS},
        checkpoint={"every": 10, "keep_last": 2},
        generate={"max_new_tokens": 16},
    )


def write_reliability_workspace(root: Path) -> Path:
    """root/{chatgpt,sora}.yaml beside data/: 300 lines of Moby-Dick, 40 for validation, 80 short
    verse pairs for finetuning."""
    data = root / "data"
    data.mkdir()
    (data / "train.txt").write_text("".join(moby_lines(300)), encoding="utf-8")
    (data / "val.txt").write_text("".join(moby_lines(40, "validation")), encoding="utf-8")
    rows = [line.rstrip("\n") for line in shortest_verse_pairs()]
    (data / "ft-train.jsonl").write_text("\n".join(rows[:64]) + "\n", encoding="utf-8")
    (data / "ft-val.jsonl").write_text("\n".join(rows[64:80]) + "\n", encoding="utf-8")
    for family in FAMILIES:
        save_recipe(root / f"{family}.yaml", reliability_recipe(family))
    return root


class References:
    """Uninterrupted runs of the reliability workspace (forked in the background), started early and
    waited for late: what an interrupted and resumed run must equal."""

    def __init__(self, ws: Path):
        self.ws = ws
        self.procs: dict[tuple[str, str], Proc] = {}

    def _start(self, stage: str, family: str, extra: list[str]) -> None:
        if (stage, family) not in self.procs:
            recipe_path = str(self.ws / f"{family}.yaml")
            self.procs[stage, family] = spawn(
                [stage, "--recipe", recipe_path, f"run.name=ref-{family}", *extra], self.ws, self.ws / "logs"
            )

    def _wait(self, stage: str, family: str) -> Path:
        proc = self.procs[stage, family]
        assert proc.wait() == 0, proc.stderr
        return self.ws / "runs" / f"ref-{family}" / stage

    def start_pretrain(self, family: str) -> None:
        self._start("pretrain", family, [])

    def pretrain(self, family: str) -> Path:
        self.start_pretrain(family)
        return self._wait("pretrain", family)

    def start_finetune(self, family: str) -> None:
        self._start("finetune", family, [f"model.init_from={self.pretrain(family) / 'final'}"])

    def finetune(self, family: str) -> Path:
        self.start_finetune(family)
        return self._wait("finetune", family)
