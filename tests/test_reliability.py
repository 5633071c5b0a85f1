"""Reliability guarantees of training (docs/reliability.md).

- resume equivalence: a run stopped by SIGTERM / SIGINT and continued with --resume logs the same
  losses and ends with the same weights, bit for bit, as an uninterrupted run (both families,
  pretrain and finetune);
- crash safety: SIGKILL at any point of a checkpoint save leaves a newest checkpoint that loads,
  and no incomplete `step-*` directory; keep_last pruning never removes the newest checkpoint;
- run locks, live and stale;
- divergence: a non-finite loss stops the run (exit 1) and keeps the last good checkpoint, or is
  skipped up to train.max_skips;
- bad input exits 2 with a message naming the culprit, no traceback, nothing half-written and an
  earlier finished run untouched;
- security: no pickle runs code, no recipe runs code, no weights are read from pickles.

Signals need real processes: the interrupted runs are the installed `textgen` script; reference,
resumed and SIGKILLed runs are forked from a server that imported torch once (see FORK_SERVER).
Everything else runs in-process, which is much faster. All runs use one torch thread, so several
run side by side on a small machine; the reference runs start once per module, in the background.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import platform
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "recipes" / "data"
FAMILIES = ("chatgpt", "sora")
PRETRAIN_STEPS = 60
FINETUNE_STEPS = 40
CONTEXT = 64
CHECKPOINT_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json")
TIMING_KEYS = ("elapsed_s", "tokens_per_s")  # wall-clock fields: the only ones allowed to differ

# Data paths are relative to the recipe file (the workspace root).
RECIPE = """\
model: {{family: {family}, layers: 1, hidden: 32, heads: 2, ffn: 64, context: %d}}
tokenizer: {{vocab_size: 400}}
stages: [pretrain, finetune]
data:
  pretrain: {{train: data/train.txt, validation: data/val.txt}}
  finetune: {{task: pairs, train: data/ft-train.jsonl, validation: data/ft-val.jsonl}}
train: {{device: cpu, batch_size: 8, warmup_steps: 10, log_every: 5, eval_every: 10, eval_batches: 2}}
pretrain: {{steps: %d}}
finetune: {{steps: %d}}
checkpoint: {{every: 10, keep_last: 2}}
generate: {{max_new_tokens: 16}}
""" % (CONTEXT, PRETRAIN_STEPS, FINETUNE_STEPS)


# ---------------------------------------------------------------------------------- helpers


def textgen_exe() -> str:
    candidate = Path(sys.executable).parent / "textgen"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("textgen")
    assert found, "the textgen entry point is not installed"
    return found


def cli_env(ws: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_DATASETS_CACHE=str(ws / "hf-datasets"),
        TEXTGEN_CACHE_DIR=str(ws / "cache"),
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
    )
    return env


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

    def __init__(self, args: list[str], cwd: Path, ws: Path, out: Path, err: Path):
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            self.popen = subprocess.Popen([textgen_exe(), *args], cwd=cwd, env=cli_env(ws), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
        _LIVE.append(self.popen)
        self.pid, self.err_path = self.popen.pid, err

    def poll(self) -> int | None:
        return self.popen.poll()


# A fork server: imports torch, transformers and textgen once, then forks one child per run; each
# child runs `textgen_cli.cli.app` (what the `textgen` script calls) with its own cwd and files,
# and exits with the CLI's exit code. It saves the ~4 s interpreter start of every run (13 runs
# here), which matters on a 2-core machine. Nothing of torch runs in the server before it forks.
FORK_SERVER = r"""
import json, os, select, signal, sys, time, traceback
import torch, transformers, datasets, accelerate
import transformers.models.gpt2.modeling_gpt2, transformers.models.bart.modeling_bart
from textgen_cli import cli, checkpoint, finetune, pretrain, train

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
    def __init__(self, ws: Path):
        self.popen = subprocess.Popen([sys.executable, "-c", FORK_SERVER], cwd=ws, env=cli_env(ws), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
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

    def run(self, args: list[str], cwd: Path, out: Path, err: Path) -> "ForkedProc":
        n = next(self.ids)
        spec = {"id": n, "args": args, "cwd": str(cwd), "out": str(out), "err": str(err)}
        self.popen.stdin.write((json.dumps(spec) + "\n").encode())
        self.popen.stdin.flush()
        with self.changed:
            ok = self.changed.wait_for(lambda: n in self.pids or self.popen.poll() is not None, timeout=120)
        assert ok and n in self.pids, "the fork server died (see the captured stderr)"
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


def spawn(args: list[str], cwd: Path, ws: Path, entry_point: bool = False) -> Proc:
    """Start `textgen ARGS` in `cwd`: through the installed entry point, or forked from the server."""
    logs = ws / "logs"
    logs.mkdir(exist_ok=True)
    n = next(_COUNTER)
    out, err = logs / f"{n}.out", logs / f"{n}.err"
    if entry_point:
        return EntryPointProc(args, cwd, ws, out, err)
    if not _SERVER:
        _SERVER.append(ForkServer(ws))
    return _SERVER[0].run(args, cwd, out, err)


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


def read_metrics(stage_dir: Path) -> list[dict]:
    lines = (stage_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines if line.strip()]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_training(reference: Path, other: Path, min_lines: tuple[int, int] = (8, 5)) -> None:
    """Every logged loss, validation loss, lr, grad norm and token count equal, and the final
    weights equal byte for byte."""
    expected, got = read_metrics(reference), read_metrics(other)
    assert sum("loss" in line for line in expected) >= min_lines[0] and sum("val_loss" in line for line in expected) >= min_lines[1]
    assert [line["step"] for line in got] == [line["step"] for line in expected], "metrics.jsonl steps differ (lost or repeated lines)"
    assert got == expected
    assert sha256(other / "final" / "model.safetensors") == sha256(reference / "final" / "model.safetensors"), "final weights differ"


def incomplete_checkpoints(work: Path) -> list[str]:
    return [d.name for d in sorted((work / "checkpoints").glob("step-*")) if not all((d / f).is_file() for f in CHECKPOINT_FILES)]


def tree_snapshot(root: Path) -> dict[str, str]:
    """Every file's hash and every directory under `root`: equal snapshots mean nothing changed."""
    return {str(p.relative_to(root)): sha256(p) if p.is_file() else "<dir>" for p in sorted(root.rglob("*"))}


def load_into_fresh_model(path: Path, like: Path, family: str = "chatgpt", steps: int = PRETRAIN_STEPS):
    """checkpoint.load into a new model (shaped like the saved model `like`), optimizer and scheduler."""
    import torch
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    from textgen_cli import checkpoint
    from textgen_cli.models import load_checkpoint
    from textgen_cli.train import param_groups

    model = load_checkpoint(like, family)
    optimizer = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-3)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, num_warmup_steps=10, num_training_steps=steps, min_lr_rate=0.1)
    state = checkpoint.load(path, model, optimizer, scheduler)
    return state, model, optimizer


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The workspace: {chatgpt,sora}.yaml beside data/ (300 lines of Moby-Dick, 40 for validation,
    80 short verse pairs for finetuning), a tokenizer cache and a datasets cache of its own."""
    root = tmp_path_factory.mktemp("reliability")
    data = root / "data"
    data.mkdir()
    for name, source, n in (("train.txt", "train.txt", 300), ("val.txt", "validation.txt", 40)):
        with (DATA / "moby-dick" / source).open(encoding="utf-8") as handle:
            (data / name).write_text("".join(itertools.islice(handle, n)), encoding="utf-8")
    rows = (DATA / "bible-modern" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    rows.sort(key=lambda line: (lambda r: len(r["source"]) + len(r["target"]))(json.loads(line)))
    (data / "ft-train.jsonl").write_text("\n".join(rows[:64]) + "\n", encoding="utf-8")
    (data / "ft-val.jsonl").write_text("\n".join(rows[64:80]) + "\n", encoding="utf-8")
    for family in FAMILIES:
        (root / f"{family}.yaml").write_text(RECIPE.format(family=family), encoding="utf-8")
    yield root
    for server in _SERVER:
        server.close()
    _SERVER.clear()
    for popen in _LIVE:
        if popen.poll() is None:
            popen.kill()
            popen.wait()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """In-process runs on one thread, like the subprocesses: tiny models gain nothing from more,
    and on a busy 2-core machine spinning OpenMP threads slow them down many times over."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class References:
    """Uninterrupted runs (subprocesses in the workspace), started early and waited for late."""

    def __init__(self, ws: Path):
        self.ws = ws
        self.procs: dict[tuple[str, str], Proc] = {}

    def _start(self, stage: str, family: str, extra: list[str]) -> None:
        if (stage, family) not in self.procs:
            recipe = str(self.ws / f"{family}.yaml")
            self.procs[stage, family] = spawn([stage, "--recipe", recipe, f"run.name=ref-{family}", *extra], self.ws, self.ws)

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


@pytest.fixture(scope="module")
def refs(ws) -> References:
    references = References(ws)
    for family in FAMILIES:
        references.start_pretrain(family)
    return references


@dataclass
class Result:
    rc: int
    out: str
    err: str


@pytest.fixture
def textgen(ws, monkeypatch, capsys) -> Callable[..., Result]:
    """Run the CLI in-process (same code path as the entry point, minus the interpreter start)."""
    monkeypatch.setenv("TEXTGEN_CACHE_DIR", str(ws / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def call(*args: str, cwd: Path) -> Result:
        from textgen_cli.cli import app

        monkeypatch.chdir(cwd)
        capsys.readouterr()
        rc = app(args=list(args), prog_name="textgen", standalone_mode=False)
        out, err = capsys.readouterr()
        return Result(0 if rc is None else rc, out, err)

    return call


@pytest.fixture(scope="module")
def small(ws) -> Path:
    """Finished tiny runs made in-process: runs/small-{chatgpt,sora}/pretrain and small-chatgpt/finetune."""
    from textgen_cli.finetune import run_finetune
    from textgen_cli.pretrain import run_pretrain
    from textgen_cli.recipe import load_recipe

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ws)
        mp.setenv("TEXTGEN_CACHE_DIR", str(ws / "cache"))
        for family in FAMILIES:
            run_pretrain(load_recipe(str(ws / f"{family}.yaml"), [f"run.name=small-{family}", "pretrain.steps=4", "checkpoint.every=0"]))
        run_finetune(load_recipe(str(ws / "chatgpt.yaml"), ["run.name=small-chatgpt", "finetune.steps=2", "checkpoint.every=0"]))
    return ws / "runs"


@pytest.fixture
def good(small, tmp_path) -> Callable[[], dict[str, str]]:
    """tmp_path/runs/good: a finished pretrain + finetune run; returns a snapshot of tmp_path/runs."""
    shutil.copytree(small / "small-chatgpt", tmp_path / "runs" / "good")
    return lambda: tree_snapshot(tmp_path / "runs")


# ---------------------------------------------------------------------------------- resume equivalence (signals)


@pytest.mark.parametrize("family", FAMILIES)
def test_sigterm_then_resume_is_bit_identical_to_an_uninterrupted_run(family, refs, ws, tmp_path):
    from textgen_cli import checkpoint

    recipe = str(ws / f"{family}.yaml")
    stage = tmp_path / "runs" / "b" / "pretrain"
    work = stage.with_name("pretrain.partial")
    run = spawn(["pretrain", "--recipe", recipe, "run.name=b"], tmp_path, ws, entry_point=True)
    wait_until(lambda: logged_step(work / "metrics.jsonl") >= 15, run, "step 15")
    run.send(signal.SIGTERM)
    assert run.wait() == 143, run.stderr
    stopped = re.search(r"interrupted at step (\d+); checkpoint saved", run.stderr)
    assert stopped, run.stderr
    assert "Traceback" not in run.stderr
    assert not stage.exists() and not stage.with_name("pretrain.lock").exists()
    found = checkpoint.latest(work)
    assert found is not None and found.name == f"step-{int(stopped.group(1)):07d}"
    saved = sorted(p.name for p in (work / "checkpoints").glob("step-*"))
    assert found.name in saved and len(saved) <= 2  # checkpoint.keep_last=2

    resumed = spawn(["pretrain", "--recipe", recipe, "run.name=b", "--resume"], tmp_path, ws)
    assert resumed.wait() == 0, resumed.stderr
    assert f"resumed at step {stopped.group(1)}/{PRETRAIN_STEPS}" in resumed.stderr
    assert not work.exists() and [p.name for p in (stage / "checkpoints").glob("step-*")] == [f"step-{PRETRAIN_STEPS:07d}"]  # checkpoint.keep_final
    assert_same_training(refs.pretrain(family), stage)
    assert json.loads((stage / "summary.json").read_text())["resumed"] is True


def test_sigint_during_finetune_exits_130_and_resume_is_bit_identical(refs, ws, tmp_path):
    start = refs.pretrain("chatgpt") / "final"
    refs.start_finetune("chatgpt")
    args = ["finetune", "--recipe", str(ws / "chatgpt.yaml"), "run.name=b", f"model.init_from={start}"]
    stage = tmp_path / "runs" / "b" / "finetune"
    run = spawn(args, tmp_path, ws, entry_point=True)
    wait_until(lambda: logged_step(stage.with_name("finetune.partial") / "metrics.jsonl") >= 10, run, "step 10")
    run.send(signal.SIGINT)
    assert run.wait() == 130, run.stderr
    assert "SIGINT: saving a checkpoint" in run.stderr and "continue with --resume" in run.stderr
    assert "Traceback" not in run.stderr
    assert not stage.exists()

    resumed = spawn([*args, "--resume"], tmp_path, ws)
    assert resumed.wait() == 0, resumed.stderr
    assert "resumed at step" in resumed.stderr
    assert_same_training(refs.finetune("chatgpt"), stage)


def test_a_second_signal_exits_at_once(ws):
    """The first SIGTERM asks for a checkpoint at the next step; a second one exits immediately with 143."""
    code = (
        "import os, signal, time\n"
        "from textgen_cli.train import StopSignals\n"
        "with StopSignals() as s:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(0.2)\n"
        "    assert s.received == signal.SIGTERM\n"
        "    print('first signal noted', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(10)\n"
        "print('not reached')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=cli_env(ws), capture_output=True, text=True, timeout=60)
    assert done.returncode == 143, done.stderr
    assert done.stdout == "first signal noted\n"
    assert "send it again to exit at once" in done.stderr


# ---------------------------------------------------------------------------------- crash safety (SIGKILL)

# Where in a checkpoint save to SIGKILL (checkpoint.every=1, so a save is nearly always under way).
KILL_POINTS: dict[str, Callable[[Path, list[str]], bool]] = {
    "temp dir created": lambda folder, names: any(n.startswith(".tmp-") for n in names),
    "optimizer written": lambda folder, names: any((folder / n / "optimizer.pt").exists() for n in names if n.startswith(".tmp-")),
    "state written": lambda folder, names: any((folder / n / "state.json").exists() for n in names if n.startswith(".tmp-")),
    "pointer moving": lambda folder, names: ".latest.tmp" in names,
    "pruning": lambda folder, names: sum(n.startswith("step-") for n in names) > 2,
}
RESUMED_KILL_POINTS = ("temp dir created", "pruning")


def test_sigkill_during_checkpoint_saves_leaves_a_loadable_checkpoint(refs, ws, tmp_path):
    from textgen_cli import checkpoint

    recipe = str(ws / "chatgpt.yaml")
    runs = {point: spawn(["pretrain", "--recipe", recipe, f"run.name=k{i}", "checkpoint.every=1"], tmp_path, ws) for i, point in enumerate(KILL_POINTS)}
    work = {point: tmp_path / "runs" / f"k{i}" / "pretrain.partial" for i, point in enumerate(KILL_POINTS)}
    how: dict[str, str] = {}
    deadline = time.monotonic() + 240
    while len(how) < len(runs):
        assert time.monotonic() < deadline, f"timed out; killed so far: {how}"
        for point, proc in runs.items():
            if point in how:
                continue
            if proc.poll() is not None:
                pytest.fail(f"{point}: textgen exited with {proc.poll()} before it was killed:\n{proc.stderr}")
            folder = work[point] / "checkpoints"
            try:
                names = os.listdir(folder)
                if "latest" not in names:  # wait for a first complete checkpoint
                    continue
                reached = KILL_POINTS[point](folder, names)
            except OSError:  # a directory renamed or removed while we looked
                continue
            step = logged_step(work[point] / "metrics.jsonl")
            if reached or step >= 40:  # never let it finish: kill at step 40 at the latest
                proc.send(signal.SIGKILL)
                how[point] = "at the point" if reached else f"at step {step}, point not seen"
        time.sleep(0.0005)

    print("SIGKILL points:", how)  # shown with -rP or on failure
    ref = refs.pretrain("chatgpt")
    for point, proc in runs.items():
        assert proc.wait() == -signal.SIGKILL
        assert not incomplete_checkpoints(work[point]), f"killed {how[point]} ({point})"
        found = checkpoint.latest(work[point])
        assert found is not None, point
        state, _, optimizer = load_into_fresh_model(found, ref / "final")
        assert state["step"] == int(found.name.removeprefix("step-")), point
        assert optimizer.state, f"{point}: the optimizer state is empty"
        assert state["metrics_lines"] <= len((work[point] / "metrics.jsonl").read_text().splitlines())

    # --resume takes over the dead process's lock and finishes exactly like the uninterrupted run
    # (checkpoint.every=0: fewer saves, same training).
    resumed = {point: spawn(["pretrain", "--recipe", recipe, f"run.name=k{list(runs).index(point)}", "checkpoint.every=0", "--resume"], tmp_path, ws) for point in RESUMED_KILL_POINTS}
    for point, proc in resumed.items():
        assert proc.wait() == 0, proc.stderr
        assert "resumed at step" in proc.stderr
        assert_same_training(ref, work[point].with_name("pretrain"))


def test_a_crash_while_pruning_leaves_no_incomplete_checkpoint(ws, monkeypatch, tmp_path):
    """Simulates a SIGKILL in the middle of deleting an old checkpoint (keep_last): what is left
    under a `step-*` name must still be complete (or gone)."""
    from textgen_cli import checkpoint
    from textgen_cli.pretrain import run_pretrain
    from textgen_cli.recipe import load_recipe

    class Killed(BaseException):
        pass

    real_rmtree = shutil.rmtree

    def dying_rmtree(path, *args, **kwargs):
        path = Path(path)
        # a checkpoint being deleted, under its own name or renamed out of the way first
        if checkpoint.PREFIX in path.name and (path / "model.safetensors").exists():
            (path / "model.safetensors").unlink()  # rmtree got this far when the process died
            raise Killed
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", dying_rmtree)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TEXTGEN_CACHE_DIR", str(ws / "cache"))
    with pytest.raises(Killed):
        run_pretrain(load_recipe(str(ws / "chatgpt.yaml"), ["run.name=p", "pretrain.steps=6", "checkpoint.every=1", "checkpoint.keep_last=1"]))
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    work = tmp_path / "runs" / "p" / "pretrain.partial"
    assert checkpoint.latest(work) == work / "checkpoints" / "step-0000002"
    assert not incomplete_checkpoints(work)


def test_a_crash_after_logging_then_resume_logs_every_step_once(ws, monkeypatch, tmp_path):
    """A crash between logging step 10 and checkpointing it: --resume goes back to step 5 and must
    drop the lines logged after that checkpoint, then log them again exactly once."""
    from textgen_cli import checkpoint
    from textgen_cli.pretrain import run_pretrain
    from textgen_cli.recipe import load_recipe

    class Killed(BaseException):
        pass

    real_save = checkpoint.save

    def dies_at_step_10(root, step, *args, **kwargs):
        if step == 10:
            raise Killed
        return real_save(root, step, *args, **kwargs)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TEXTGEN_CACHE_DIR", str(ws / "cache"))
    recipe = str(ws / "chatgpt.yaml")
    settings = ["pretrain.steps=20", "checkpoint.every=5"]
    run_pretrain(load_recipe(recipe, ["run.name=whole", *settings]))
    monkeypatch.setattr(checkpoint, "save", dies_at_step_10)
    with pytest.raises(Killed):
        run_pretrain(load_recipe(recipe, ["run.name=crash", *settings]))
    work = tmp_path / "runs" / "crash" / "pretrain.partial"
    assert logged_step(work / "metrics.jsonl") == 10 and checkpoint.latest(work).name == "step-0000005"
    monkeypatch.setattr(checkpoint, "save", real_save)
    run_pretrain(load_recipe(recipe, ["run.name=crash", *settings, "resume=auto"]))
    assert_same_training(tmp_path / "runs" / "whole" / "pretrain", tmp_path / "runs" / "crash" / "pretrain", min_lines=(4, 3))


# ---------------------------------------------------------------------------------- keep_last


def test_keep_last_keeps_only_the_newest_checkpoints(ws, monkeypatch, tmp_path):
    from textgen_cli import checkpoint
    from textgen_cli.pretrain import run_pretrain
    from textgen_cli.recipe import load_recipe

    seen: list[tuple[int, list[str], str]] = []
    real_save = checkpoint.save

    def recording_save(root, step, *args, **kwargs):
        path = real_save(root, step, *args, **kwargs)
        folder = root / checkpoint.CHECKPOINTS
        seen.append((step, sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")), (folder / checkpoint.LATEST).read_text()))
        return path

    monkeypatch.setattr(checkpoint, "save", recording_save)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TEXTGEN_CACHE_DIR", str(ws / "cache"))
    run_pretrain(load_recipe(str(ws / "chatgpt.yaml"), ["run.name=keep", "pretrain.steps=8", "checkpoint.every=1", "checkpoint.keep_last=3", "checkpoint.keep_final=false"]))
    assert [step for step, _, _ in seen] == list(range(1, 8))  # every step but the last (the final model)
    for step, names, pointer in seen:
        kept = [f"step-{s:07d}" for s in range(max(1, step - 2), step + 1)]
        assert names == ["latest", *kept], f"after the save of step {step}"
        assert pointer == f"step-{step:07d}"
    assert not (tmp_path / "runs" / "keep" / "pretrain" / "checkpoints").exists()  # a finished run keeps none


def test_pruning_never_deletes_the_newest_checkpoint(tmp_path):
    """A stale higher-numbered checkpoint (left by an earlier attempt) must not push the checkpoint
    just written out of keep_last."""
    from textgen_cli import checkpoint

    folder = tmp_path / "checkpoints"
    for step in (5, 6, 9):
        (folder / f"step-{step:07d}").mkdir(parents=True)
    (folder / ".tmp-step-0000007").mkdir()
    checkpoint.prune(folder, keep_last=1, newest=folder / "step-0000006")
    assert sorted(p.name for p in folder.iterdir()) == ["step-0000006", "step-0000009"]


# ---------------------------------------------------------------------------------- locks


HOLD_LOCK = """
import sys, time
from pathlib import Path
from textgen_cli.runs import RunDir
run = RunDir(Path(sys.argv[1]))  # kept: a lock that is garbage-collected is released
run._lock()
print("locked", flush=True)
time.sleep(120)
"""


def hold_lock(stage: Path) -> subprocess.Popen:
    """Another process that takes the stage's lock the way a run does, then waits."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(stage)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_live_lock_refuses_a_second_run(good, ws, textgen, tmp_path):
    before = good()
    owner = hold_lock(tmp_path / "runs" / "good" / "pretrain")
    try:
        lock = tmp_path / "runs" / "good" / "pretrain.lock"
        result = textgen("pretrain", "--recipe", str(ws / "chatgpt.yaml"), "run.name=good", "pretrain.steps=2", cwd=tmp_path)
        assert result.rc == 2, result.err
        assert f"error: run directory '{Path('runs/good/pretrain')}' is in use by process {owner.pid} (lock file {Path('runs/good/pretrain.lock')}); wait for it or stop it" in result.err
        assert "Traceback" not in result.err
        assert json.loads(lock.read_text())["pid"] == owner.pid  # the loser leaves the owner's lock alone
    finally:
        owner.kill()
        owner.wait()
    (tmp_path / "runs" / "good" / "pretrain.lock").unlink()
    assert good() == before


def test_a_killed_holder_never_leaves_a_stale_lock(good, ws, textgen, tmp_path):
    """The kernel drops a SIGKILLed process's lock: the file it leaves locks nothing, and the next
    run takes it without a word and removes it when done."""
    lock = tmp_path / "runs" / "good" / "pretrain.lock"
    owner = hold_lock(tmp_path / "runs" / "good" / "pretrain")
    owner.send_signal(signal.SIGKILL)
    assert owner.wait() == -signal.SIGKILL
    assert json.loads(lock.read_text())["pid"] == owner.pid  # the dead holder's file is still there
    result = textgen("pretrain", "--recipe", str(ws / "chatgpt.yaml"), "run.name=good", "pretrain.steps=2", cwd=tmp_path)
    assert result.rc == 0, result.err
    assert "lock " not in result.err and "stale" not in result.err
    assert not lock.exists()
    assert json.loads((tmp_path / "runs" / "good" / "pretrain" / "summary.json").read_text())["steps"] == 2


# ---------------------------------------------------------------------------------- divergence


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(ws, textgen, tmp_path):
    """A huge learning rate without clipping or warmup: step 1's update blows the weights up."""
    from safetensors.torch import load_file

    from textgen_cli import checkpoint

    overrides = ["run.name=div", "pretrain.steps=20", "train.lr=1e30", "train.clip_grad=0", "train.warmup_steps=0", "checkpoint.every=1"]
    result = textgen("pretrain", "--recipe", str(ws / "chatgpt.yaml"), *overrides, cwd=tmp_path)
    assert result.rc == 1, result.err
    match = re.search(r"non-finite (loss|gradient) at step (\d+); stopping; the last good checkpoint is (\S+)", result.err)
    assert match, result.err
    assert "Traceback" not in result.err
    step = int(match.group(2))
    work = tmp_path / "runs" / "div" / "pretrain.partial"
    found = checkpoint.latest(work)
    assert found is not None and found.name == f"step-{step - 1:07d}" and str(found).endswith(match.group(3))
    assert all(bool(t.isfinite().all()) for t in load_file(found / "model.safetensors").values())
    assert not (tmp_path / "runs" / "div" / "pretrain").exists()
    assert not (tmp_path / "runs" / "div" / "pretrain.lock").exists()


@pytest.fixture
def nan_at_steps(monkeypatch):
    """Make the training loss NaN at the given optimizer steps (grad_accum=1: one call per step)."""
    from textgen_cli import train

    real = train.token_loss_sum

    def install(steps: set[int]) -> None:
        calls = {"n": 0}

        def flaky(model, batch, causal):
            loss, n_tokens = real(model, batch, causal)
            if model.training:
                calls["n"] += 1
                if calls["n"] in steps:
                    loss = loss * float("nan")
            return loss, n_tokens

        monkeypatch.setattr(train, "token_loss_sum", flaky)

    return install


def test_on_nonfinite_skip_skips_then_stops_after_max_skips(ws, textgen, nan_at_steps, tmp_path):
    from textgen_cli import checkpoint

    nan_at_steps({4, 6, 7, 9})
    overrides = ["run.name=skip", "pretrain.steps=12", "train.on_nonfinite=skip", "train.max_skips=2", "checkpoint.every=5"]
    result = textgen("pretrain", "--recipe", str(ws / "chatgpt.yaml"), *overrides, cwd=tmp_path)
    assert result.rc == 1, result.err
    assert "step 4: non-finite loss, step skipped (1/2)" in result.err
    assert "step 6: non-finite loss, step skipped (2/2)" in result.err
    assert "non-finite loss at step 7 after 2 skipped steps; stopping" in result.err
    work = tmp_path / "runs" / "skip" / "pretrain.partial"
    assert checkpoint.latest(work) == work / "checkpoints" / "step-0000005"


def test_on_nonfinite_skip_finishes_when_skips_stay_under_max_skips(ws, textgen, nan_at_steps, tmp_path):
    nan_at_steps({3})
    overrides = ["run.name=skip1", "pretrain.steps=8", "train.on_nonfinite=skip", "train.max_skips=2", "--json"]
    result = textgen("pretrain", "--recipe", str(ws / "chatgpt.yaml"), *overrides, cwd=tmp_path)
    assert result.rc == 0, result.err
    summary = json.loads(result.out)
    assert summary["skipped_steps"] == 1 and math.isfinite(summary["final_val_loss"])


# ---------------------------------------------------------------------------------- bad input


BAD_RECIPES = {
    # name: (recipe text, substrings the message must contain)
    "yaml syntax": ("model: {{family: chatgpt}}\ntrain:\n  lr: 0.001: 2\n{data}", ["line 3", "bad.yaml"]),
    "unknown family": ("model: {{family: gpt5}}\n{data}", ["model.family", "gpt5", "sora, chatgpt"]),
    "missing interpolation": ("model: {{family: chatgpt}}\ntrain: {{lr: '${{train.peak_lr}}'}}\n{data}", ["train.lr", "train.peak_lr"]),
}


@pytest.mark.parametrize("case", BAD_RECIPES)
def test_a_bad_recipe_exits_2_and_touches_nothing(case, good, ws, tmp_path):
    text, expected = BAD_RECIPES[case]
    data = f"run: {{name: good}}\ndata: {{pretrain: {{train: {ws / 'data' / 'train.txt'}}}}}\n"
    (tmp_path / "bad.yaml").write_text(text.format(data=data), encoding="utf-8")
    before = good()
    done = subprocess.run([textgen_exe(), "pretrain", "--recipe", "bad.yaml"], cwd=tmp_path, env=cli_env(ws), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    for part in expected:
        assert part in done.stderr
    assert good() == before


def _empty_file(tmp: Path, ws: Path):
    (tmp / "empty.txt").write_text("")
    return "pretrain", [f"data.pretrain.train={tmp / 'empty.txt'}"], ["empty.txt", "is empty"]


def _split_too_small(tmp: Path, ws: Path):
    (tmp / "short.txt").write_text("Call me Ishmael.\n")
    return "pretrain", [f"data.pretrain.train={tmp / 'short.txt'}"], ["training split gives 0 examples", "train.batch_size=8"]


def _long_example(tmp: Path, ws: Path) -> Path:
    rows = (ws / "data" / "ft-train.jsonl").read_text()
    long = json.dumps({"id": "far-too-long", "source": "Call me Ishmael.", "target": "Call me Ishmael. " * 40})
    path = tmp / "ft-long.jsonl"
    path.write_text(rows + long + "\n")
    return path


def _too_long_error(tmp: Path, ws: Path):
    return "finetune", [f"data.finetune.train={_long_example(tmp, ws)}", "data.too_long=error"], ["far-too-long", f"model.context={CONTEXT}", "data.too_long=error"]


def _init_from_missing(tmp: Path, ws: Path):
    return "finetune", [f"model.init_from={tmp / 'no-such-model'}"], ["no-such-model", "does not exist"]


def _corrupt_weights(tmp: Path, ws: Path):
    model = tmp / "corrupt-model"
    shutil.copytree(ws / "runs" / "small-chatgpt" / "pretrain" / "final", model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return "finetune", [f"model.init_from={model}"], ["corrupt-model", "cannot load the weights"]


def _vocab_mismatch(tmp: Path, ws: Path):
    from textgen_cli.tokenizer import train_tokenizer

    model = tmp / "other-tokenizer"
    shutil.copytree(ws / "runs" / "small-chatgpt" / "pretrain" / "final", model)
    texts = (ws / "data" / "train.txt").read_text().splitlines()
    train_tokenizer(texts, vocab_size=320, min_frequency=2).save_pretrained(model)
    return "finetune", [f"model.init_from={model}"], ["other-tokenizer", "token embeddings but its tokenizer has 320 tokens"]


def _other_family(tmp: Path, ws: Path):
    return "finetune", [f"model.init_from={ws / 'runs' / 'small-sora' / 'pretrain' / 'final'}"], ["is a `sora` model", "model.family is `chatgpt`"]


def _root_is_a_file(tmp: Path, ws: Path):
    (tmp / "afile").write_text("not a directory")
    return "pretrain", ["run.root=afile"], ["'afile' is a file"]


BAD_INPUTS = {
    "empty data file": _empty_file,
    "split smaller than a batch": _split_too_small,
    "too long with too_long=error": _too_long_error,
    "init_from missing": _init_from_missing,
    "corrupted safetensors": _corrupt_weights,
    "tokenizer of another vocabulary": _vocab_mismatch,
    "checkpoint of the other family": _other_family,
    "run.root is a file": _root_is_a_file,
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_exits_2_and_leaves_earlier_results_untouched(case, good, ws, textgen, tmp_path):
    stage, overrides, expected = BAD_INPUTS[case](tmp_path, ws)
    before = good()
    result = textgen(stage, "--recipe", str(ws / "chatgpt.yaml"), "run.name=good", f"{stage}.steps=2", *overrides, cwd=tmp_path)
    assert result.rc == 2, result.err
    assert "error: " in result.err and "Traceback" not in result.err
    for part in expected:
        assert part in result.err
    assert good() == before  # no <stage>.partial, no lock, the finished run byte for byte


def test_too_long_examples_are_truncated_with_a_counting_warning(small, ws, textgen, tmp_path):
    long = _long_example(tmp_path, ws)
    result = textgen("finetune", "--recipe", str(ws / "chatgpt.yaml"), "run.name=trunc", "finetune.steps=2", f"data.finetune.train={long}",
                     f"model.init_from={small / 'small-chatgpt' / 'pretrain' / 'final'}", "--json", cwd=tmp_path)
    assert result.rc == 0, result.err
    assert re.search(rf"warning: .*\b1 \w* ?examples were longer than model.context={CONTEXT} and were truncated", result.err), result.err
    assert "dropped" not in result.err  # the long example keeps some of its target to learn from
    assert json.loads(result.out)["truncated_examples"] == 1


# ---------------------------------------------------------------------------------- security


class _RunsCode:
    """Unpickling this runs a shell command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng.pt"])
def test_checkpoint_load_refuses_a_pickle_that_runs_code(name, tmp_path):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, get_cosine_with_min_lr_schedule_with_warmup

    from textgen_cli import checkpoint
    from textgen_cli.errors import UserError

    def fresh():
        model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=8, n_layer=1, n_head=2))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        return model, optimizer, get_cosine_with_min_lr_schedule_with_warmup(optimizer, 1, 10, min_lr_rate=0.1)

    model, optimizer, scheduler = fresh()
    model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    optimizer.step()
    saved = checkpoint.save(tmp_path, 1, model, optimizer, scheduler, {"metrics_lines": 0}, keep_last=2)
    assert checkpoint.load(saved, *fresh())["step"] == 1  # the checkpoint is valid

    marker = tmp_path / "pwned"
    torch.save({"state": _RunsCode(f"touch {marker}")}, saved / name)
    with pytest.raises(UserError, match="cannot be loaded"):
        checkpoint.load(saved, *fresh())
    assert not marker.exists()
    torch.load(saved / name, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()


def test_a_recipe_cannot_run_code(good, ws, tmp_path):
    import yaml

    marker = tmp_path / "pwned"
    text = f'description: !!python/object/apply:os.system ["touch {marker}"]\nmodel: {{family: chatgpt}}\nrun: {{name: good}}\n'
    (tmp_path / "evil.yaml").write_text(text)
    before = good()
    done = subprocess.run([textgen_exe(), "pretrain", "--recipe", "evil.yaml"], cwd=tmp_path, env=cli_env(ws), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "evil.yaml" in done.stderr and "line 1" in done.stderr and "Traceback" not in done.stderr
    assert not marker.exists()
    assert good() == before
    yaml.unsafe_load(text)  # the payload is live: an unsafe loader runs it
    assert marker.exists()


def test_load_checkpoint_refuses_pickled_weights(small, tmp_path):
    import torch

    from textgen_cli.errors import UserError
    from textgen_cli.models import load_checkpoint

    model_dir = tmp_path / "pickled"
    shutil.copytree(small / "small-chatgpt" / "pretrain" / "final", model_dir)
    (model_dir / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"weights": _RunsCode(f"touch {marker}")}, model_dir / "pytorch_model.bin")
    with pytest.raises(UserError, match="no .safetensors weights"):
        load_checkpoint(model_dir, "chatgpt")
    assert not marker.exists()
