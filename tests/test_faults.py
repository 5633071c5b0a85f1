"""Faults that long runs meet (docs/reliability.md, "Disk space" and "Damaged checkpoints").

- a full disk while writing a checkpoint, metrics.jsonl, final/ or the packed-blocks cache: exit 1,
  one message naming the path, the space needed and the checkpoint that is intact, the partial write
  removed at once, and `--resume` ends bit-identical to an uninterrupted run with no manual cleanup;
- the pre-flight space check refuses (exit 2) a run the disk has no room for, and warns when tight;
- an unwritable or read-only run.root is refused with exit 2;
- a damaged newest checkpoint (truncated, or one flipped byte that still loads) is found by its
  checksums: `--resume` warns, names it, falls back to the newest intact one, and ends bit-identical;
- stale `.tmp-*` leftovers are removed by `--resume`.

A full disk is made two ways: a real one, a small tmpfs filled up by a ballast file while the run
trains (where this machine lets the test mount one: root with CAP_SYS_ADMIN), and an injected one
(the write fails the way a library reports it). The injected cases always run, so the suite never
depends on mounting; the tmpfs cases say why when they cannot run.

Runs are in-process through the CLI (`textgen_cli.cli.app.app`), on one torch thread, with a 1-layer
model; the uninterrupted reference run is made once per module.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections import namedtuple
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import Result, assert_same_training, write_tiny_pretrain

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SETTINGS = ["pretrain.steps=40", "checkpoint.every=10", "checkpoint.keep_last=2"]
DiskUsage = namedtuple("DiskUsage", "total used free")


# ---------------------------------------------------------------------------------- helpers


def checkpoint_names(work: Path) -> list[str]:
    return sorted(p.name for p in (work / "checkpoints").iterdir())


@contextlib.contextmanager
def tmpfs(folder: Path, size: str, read_only: bool = False) -> Iterator[None]:
    """A tmpfs of `size` mounted on `folder` for the block, or pytest.skip saying why it cannot be."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    if shutil.which("mount") is None:
        pytest.skip("no mount command: the injected variant of this fault covers it")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): the injected variant of this fault covers it")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def fill_up(folder: Path, leave: int = 16 * 1024) -> Path:
    """Another program fills the disk: a ballast file taking all but `leave` bytes."""
    ballast = folder / "ballast"
    room = shutil.disk_usage(folder).free - leave
    with ballast.open("wb") as handle:
        handle.write(b"\0" * max(0, room))
    return ballast


def fake_free_space(monkeypatch, under: Path, free: Callable[[], int | None]) -> None:
    """shutil.disk_usage reports `free()` bytes free for paths under `under` (when it is not None)."""
    real = shutil.disk_usage

    def disk_usage(path):
        found = free()
        if found is not None and Path(os.path.abspath(path)).is_relative_to(under.resolve()):
            return DiskUsage(10**9, 10**9 - found, found)
        return real(path)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)


def failing_open(monkeypatch, matches: Callable[[Path], bool], keep_bytes: int = 7) -> dict[str, int]:
    """Path.open of a file that `matches`, for writing, gives a handle whose write stores
    `keep_bytes` bytes and then fails with ENOSPC, as a full disk does. Counts the failures."""
    real_open = Path.open
    failures = {"n": 0}

    class FullDiskHandle:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            self.handle.write(data[:keep_bytes])
            self.handle.flush()
            failures["n"] += 1
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def open_(self, mode="r", *args, **kwargs):
        handle = real_open(self, mode, *args, **kwargs)
        return FullDiskHandle(handle) if any(c in mode for c in "wa") and matches(self) else handle

    monkeypatch.setattr(Path, "open", open_)
    return failures


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """tiny.yaml (1-layer chatgpt, 40 steps, a checkpoint every 10) beside its data."""
    root = tmp_path_factory.mktemp("faults")
    write_tiny_pretrain(root)
    return root


@pytest.fixture(scope="module")
def reference(ws) -> Path:
    """The uninterrupted run every resumed one must equal."""
    from textgen_cli.recipe import load_recipe
    from textgen_cli.training.pretrain import run_pretrain

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ws)
        run_pretrain(load_recipe(str(ws / "tiny.yaml"), ["run.name=reference", *SETTINGS]))
    return ws / "runs" / "reference" / "pretrain"


@pytest.fixture
def textgen(ws, textgen_here) -> Callable[..., Result]:
    """`textgen pretrain --recipe tiny.yaml <SETTINGS> <args>`, in-process, from `cwd`."""
    return lambda *args, cwd: textgen_here("pretrain", "--recipe", str(ws / "tiny.yaml"), *SETTINGS, *args, cwd=cwd)


# ---------------------------------------------------------------------------------- a full disk


@pytest.mark.parametrize("how", ["injected", "tmpfs"])
def test_a_full_disk_during_a_checkpoint_is_reported_and_resume_needs_no_cleanup(
    how, reference, textgen, monkeypatch, tmp_path
):
    """The step-20 checkpoint does not fit. injected: torch.save fails the way it does on a full disk
    (a RuntimeError that has lost the errno) and the filesystem reports 4 KB free; tmpfs: a real
    8 MB filesystem that another program fills up just before that save."""
    import torch

    from textgen_cli.training import checkpoint

    root = tmp_path / "disk"
    with tmpfs(root, "8m") if how == "tmpfs" else contextlib.nullcontext():
        work = root / "runs" / "full" / "pretrain.partial"
        real_save = checkpoint.save
        ballast: list[Path] = []
        full = {"now": False}

        def save_on_a_filling_disk(folder, step, *args, **kwargs):
            if step == 20:
                full["now"] = True
                if how == "tmpfs":
                    ballast.append(fill_up(root))
            return real_save(folder, step, *args, **kwargs)

        real_torch_save = torch.save

        def torch_save(obj, path, *args, **kwargs):
            if full["now"] and how == "injected" and Path(path).name == "optimizer.pt":
                Path(path).write_bytes(b"PK\x03\x04 half a zip")
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
            return real_torch_save(obj, path, *args, **kwargs)

        monkeypatch.setattr(checkpoint, "save", save_on_a_filling_disk)
        monkeypatch.setattr(torch, "save", torch_save)
        if how == "injected":
            fake_free_space(monkeypatch, root, lambda: 4096 if full["now"] else None)
        failed = textgen(f"run.root={root / 'runs'}", "run.name=full", cwd=tmp_path)

        assert failed.rc == 1, failed.err
        message = failed.err.strip().splitlines()[-1]
        print(message)  # shown with -rP: the exact text a user sees
        assert message.startswith(
            f"error: no space left on the device for checkpoint {work / 'checkpoints' / 'step-0000020'}: it needs about "
        )
        assert (
            f"the newest complete checkpoint, {work / 'checkpoints' / 'step-0000010'}, is intact: free some space, then continue with --resume"
            in message
        )
        assert "Traceback" not in failed.err and "RuntimeError" not in failed.err
        assert checkpoint_names(work) == ["latest", "step-0000010"]  # the partial .tmp-step-0000020 is gone at once
        assert not (work.parent / "pretrain.lock").exists()

        monkeypatch.setattr(checkpoint, "save", real_save)
        monkeypatch.setattr(torch, "save", real_torch_save)
        full["now"] = False
        for file in ballast:
            file.unlink()  # the user frees some space; nothing else is cleaned up by hand
        resumed = textgen(f"run.root={root / 'runs'}", "run.name=full", "--resume", cwd=tmp_path)
        assert resumed.rc == 0, resumed.err
        assert f"resuming from {work / 'checkpoints' / 'step-0000010'}" in resumed.err
        assert_same_training(reference, work.with_name("pretrain"), min_lines=(8, 3))


def test_a_full_disk_at_the_first_checkpoint_says_there_is_nothing_to_resume(textgen, monkeypatch, tmp_path):
    """No checkpoint yet (the issue's 6 MB filesystem): the same clear message, ending with what to
    do instead of --resume, and no <stage>.partial/ left holding the disk."""
    from safetensors import torch as safetensors_torch

    def save_file(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors_torch, "save_file", save_file)
    failed = textgen("run.name=first", cwd=tmp_path)
    assert failed.rc == 1, failed.err
    message = failed.err.strip().splitlines()[-1]
    print(message)
    assert message.startswith(
        "error: no space left on the device for checkpoint runs/first/pretrain.partial/checkpoints/step-0000010: it needs about "
    )
    assert message.endswith("; no checkpoint has been saved yet: free some space, then run the stage again")
    assert sorted(p.name for p in (tmp_path / "runs" / "first").iterdir()) == []  # no .partial, no lock


def test_a_full_disk_while_logging_metrics_keeps_whole_lines(reference, textgen, monkeypatch, tmp_path):
    """The metrics line of step 25 fails half-written (ENOSPC): the half line is removed at once,
    and --resume (from step 20) ends bit-identical."""
    work = tmp_path / "runs" / "log" / "pretrain.partial"
    real_open = Path.open

    def after_step_20(path: Path) -> bool:  # the append after step 20's validation line (and checkpoint)
        if path.name != "metrics.jsonl" or not path.exists():
            return False
        with real_open(path, encoding="utf-8") as handle:
            return '{"step": 20, "tokens"' in handle.read()

    failures = failing_open(monkeypatch, after_step_20)
    failed = textgen("run.name=log", cwd=tmp_path)
    work = Path("runs/log/pretrain.partial")  # as the user named it: run.root is relative (runs)
    assert failed.rc == 1, failed.err
    assert failures["n"] == 1
    message = failed.err.strip().splitlines()[-1]
    print(message)
    assert message.startswith(
        f"error: no space left on the device for the metrics file {work / 'metrics.jsonl'}: it needs about "
    )
    assert f"the newest complete checkpoint, {work / 'checkpoints' / 'step-0000020'}, is intact" in message
    logged = (tmp_path / work / "metrics.jsonl").read_text(encoding="utf-8")
    assert (
        logged.endswith("\n") and [json.loads(line)["step"] for line in logged.splitlines()][-1] == 20
    )  # whole lines only

    monkeypatch.undo()
    resumed = textgen("run.name=log", "--resume", cwd=tmp_path)
    assert resumed.rc == 0, resumed.err
    assert_same_training(reference, tmp_path / "runs" / "log" / "pretrain", min_lines=(8, 3))


def test_a_full_disk_while_saving_the_final_model_removes_it_and_names_the_checkpoint(
    reference, textgen, monkeypatch, tmp_path
):
    """safetensors reports a full disk only in words ("os error 28"): still a DiskFull, final/ gone."""
    from transformers import PreTrainedModel

    def save_pretrained(self, folder, *args, **kwargs):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        raise Exception("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_pretrained)
    work = Path("runs/fin/pretrain.partial")
    failed = textgen("run.name=fin", cwd=tmp_path)
    assert failed.rc == 1, failed.err
    message = failed.err.strip().splitlines()[-1]
    print(message)
    assert message.startswith(
        f"error: no space left on the device for the final model {work / 'final'}: it needs about "
    )
    # the stage saves its last step's checkpoint before final/ (checkpoint.keep_final keeps it)
    assert (
        f"the newest complete checkpoint, {work / 'checkpoints' / 'step-0000040'}, is intact: free some space, then continue with --resume"
        in message
    )
    assert not (tmp_path / work / "final").exists()
    assert not (tmp_path / work.with_name("pretrain")).exists()


def test_a_full_disk_while_packing_leaves_no_partial_cache(ws, textgen, monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    monkeypatch.setenv("TEXTGEN_CACHE_DIR", str(cache))
    failing_open(monkeypatch, lambda path: path.parent.name == "blocks" and path.name.endswith(".tmp"))
    failed = textgen("run.name=pack", cwd=tmp_path)
    assert failed.rc == 1, failed.err
    message = failed.err.strip().splitlines()[-1]
    print(message)
    assert message.startswith(f"error: no space left on the device for the packed-blocks cache {cache / 'blocks'}")
    assert (
        "the partial file was removed and nothing was cached: free some space (or set TEXTGEN_CACHE_DIR to a disk with room), then run again"
        in message
    )
    assert sorted(p.name for p in (cache / "blocks").iterdir()) == []
    assert not (tmp_path / "runs" / "pack").exists()  # packing comes before the run directory


def test_write_text_atomic_on_a_full_disk_keeps_the_old_file(monkeypatch, tmp_path):
    """What evaluate and report call: a full disk leaves the earlier content and no temporary copy."""
    from textgen_cli.core.errors import DiskFull
    from textgen_cli.core.files import write_text_atomic

    target = tmp_path / "eval.json"
    target.write_text("earlier result\n")
    failing_open(monkeypatch, lambda path: path.name.startswith(".eval.json.") and path.name.endswith(".tmp"))
    with pytest.raises(DiskFull) as raised:
        write_text_atomic(target, "x" * 5000)
    assert str(raised.value).startswith(f"no space left on the device for file {target}: it needs about 4.9 KB and ")
    assert str(raised.value).endswith("; the file is unchanged (nothing was written): free some space, then run again")
    assert target.read_text() == "earlier result\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]


# ---------------------------------------------------------------------------------- pre-flight


@pytest.mark.parametrize("how", ["injected", "tmpfs"])
def test_the_preflight_check_refuses_a_run_the_disk_has_no_room_for(how, textgen, monkeypatch, tmp_path):
    root = tmp_path / "small"
    with tmpfs(root, "1m") if how == "tmpfs" else contextlib.nullcontext():
        if how == "injected":
            fake_free_space(monkeypatch, root, lambda: 1024 * 1024)
        refused = textgen(f"run.root={root / 'runs'}", "run.name=big", cwd=tmp_path)
        assert refused.rc == 2, refused.err
        message = refused.err.strip().splitlines()[-1]
        print(message)
        work = root / "runs" / "big" / "pretrain.partial"
        assert message.startswith(f"error: not enough free space for {work}: the run will write about ")
        assert "(3 checkpoints of " in message and " at once, and final/ of " in message
        assert re.search(
            r"\) and (1020\.0 KB|1\.0 MB) are free on /", message
        )  # the 1 MB filesystem, less its own directories
        assert message.endswith(
            "; free some space, lower checkpoint.keep_last, or set run.root to a disk with more room"
        )
        assert sorted(p.name for p in (root / "runs" / "big").iterdir()) == []  # no .partial, no lock


def test_the_preflight_check_warns_when_the_room_is_tight(textgen, monkeypatch, tmp_path):
    from textgen_cli.core import diskspace

    estimate = {}
    real = diskspace.check_room

    def check_room(found, folder, warn):
        estimate["needed"] = found.needed
        return real(found, folder, warn)

    monkeypatch.setattr(diskspace, "check_room", check_room)
    fake_free_space(monkeypatch, tmp_path, lambda: int(1.2 * estimate["needed"]) if estimate else None)
    done = textgen("run.name=tight", "pretrain.steps=2", cwd=tmp_path)
    assert done.rc == 0, done.err
    warning = next(line for line in done.err.splitlines() if line.startswith("warning: little free space"))
    print(warning)
    assert warning.endswith("; if the disk fills up, the run stops with the newest checkpoint intact")


def test_the_checkpoint_size_estimate_covers_a_real_checkpoint(tmp_path):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, get_cosine_with_min_lr_schedule_with_warmup

    from textgen_cli.core import diskspace
    from textgen_cli.training import checkpoint

    model = GPT2LMHeadModel(GPT2Config(vocab_size=400, n_positions=32, n_embd=32, n_layer=1, n_head=2, n_inner=64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, 1, 10, min_lr_rate=0.1)
    model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    optimizer.step()
    saved = checkpoint.save(tmp_path, 1, model, optimizer, scheduler, {"metrics_lines": 0}, keep_last=2)
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    estimate = diskspace.estimate_run(parameter_bytes, 0, steps=40, every=10, keep_last=2)
    actual = diskspace.tree_bytes(saved)
    print(f"checkpoint {actual:,} bytes, estimated {estimate.checkpoint:,}")
    assert actual <= estimate.checkpoint <= actual + diskspace.SMALL_FILES_BYTES
    assert estimate.checkpoints == 3  # keep_last=2 and the one being written


# ---------------------------------------------------------------------------------- an unwritable run.root


@pytest.mark.parametrize("how", ["injected", "read-only mount", "permissions"])
def test_an_unwritable_run_root_is_refused_with_exit_2(how, textgen, monkeypatch, tmp_path):
    """Refused before any work: no tokenizer trained, no data packed (the cache stays empty), and
    no folder left behind by the check itself."""
    root = tmp_path / "locked"
    cache = tmp_path / "cache"
    monkeypatch.setenv("TEXTGEN_CACHE_DIR", str(cache))
    if how == "permissions" and os.geteuid() == 0:
        pytest.skip("root ignores file permissions: the read-only mount and the injected variants cover it")
    with tmpfs(root, "1m", read_only=True) if how == "read-only mount" else contextlib.nullcontext():
        if how == "permissions":
            root.mkdir()
            root.chmod(0o555)
        if how == "injected":
            real_mkstemp = tempfile.mkstemp

            def read_only(*args, dir=None, **kwargs):
                if dir is not None and Path(dir).is_relative_to(root):
                    raise OSError(errno.EROFS, "Read-only file system")
                return real_mkstemp(*args, dir=dir, **kwargs)

            monkeypatch.setattr(tempfile, "mkstemp", read_only)
        try:
            refused = textgen(f"run.root={root / 'runs'}", "run.name=ro", cwd=tmp_path)
        finally:
            if how == "permissions":
                root.chmod(0o755)
        assert refused.rc == 2, refused.err
        message = refused.err.strip().splitlines()[-1]
        print(message)
        reason = "Permission denied" if how == "permissions" else "Read-only file system"
        assert (
            message
            == f"error: cannot write in '{root / 'runs' / 'ro'}' ({reason}): make it writable, or set run.root to a writable directory"
        )
        assert "Traceback" not in refused.err and "step 1" not in refused.err  # no training started
        assert not (root / "runs").exists()
        assert not cache.exists() or not any(cache.rglob("*")), sorted(
            cache.rglob("*")
        )  # no tokenizer, no packed blocks


# ---------------------------------------------------------------------------------- resuming with the same or changed settings

SETTINGS_DIFFER = "warning: the recipe's settings differ from those of the interrupted run"


def test_resume_warns_only_when_the_settings_changed(textgen, monkeypatch, tmp_path):
    """--resume itself (resume=auto) is no change of settings; train.weight_decay is. Each run is
    stopped right after its step-10 checkpoint."""
    from textgen_cli.training import checkpoint

    class Killed(BaseException):
        pass

    real_save = checkpoint.save

    def killed_after_step_10(folder, step, *args, **kwargs):
        path = real_save(folder, step, *args, **kwargs)
        if step == 10:
            raise Killed
        return path

    def interrupted() -> None:
        monkeypatch.setattr(checkpoint, "save", killed_after_step_10)
        with pytest.raises(Killed):
            textgen("run.name=same", "pretrain.steps=30", cwd=tmp_path)
        monkeypatch.setattr(checkpoint, "save", real_save)

    interrupted()
    same = textgen("run.name=same", "pretrain.steps=30", "--resume", cwd=tmp_path)
    assert same.rc == 0, same.err
    assert "pretrain: resumed at step 10/30" in same.err and SETTINGS_DIFFER not in same.err, same.err

    interrupted()  # afresh, then resumed with another weight decay
    changed = textgen("run.name=same", "pretrain.steps=30", "train.weight_decay=0.05", "--resume", cwd=tmp_path)
    assert changed.rc == 0, changed.err
    assert f"{SETTINGS_DIFFER} (runs/same/pretrain.partial/checkpoints/step-0000010)" in changed.err, changed.err


# ---------------------------------------------------------------------------------- a damaged newest checkpoint


def _truncate_weights(checkpoint_dir: Path) -> str:
    weights = checkpoint_dir / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])
    return f"model.safetensors has {size // 2:,} bytes, {size:,} when it was saved"


def _flip_an_optimizer_byte(checkpoint_dir: Path) -> str:
    """One bit flipped in the middle of the optimizer state (tensor data): it still loads, silently
    wrong, so only the checksum can tell."""
    import torch

    state = checkpoint_dir / "optimizer.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0x01
    state.write_bytes(bytes(data))
    torch.load(state, weights_only=True)  # loads without complaint
    return "optimizer.pt does not match the checksum written when it was saved"


@pytest.mark.parametrize(
    "damage", [_truncate_weights, _flip_an_optimizer_byte], ids=["truncated weights", "flipped optimizer byte"]
)
def test_a_damaged_newest_checkpoint_is_skipped_and_resume_is_bit_identical(
    damage, reference, textgen, monkeypatch, tmp_path
):
    """Killed right after the step-30 checkpoint, which is then damaged; a save cut short left a
    .tmp-* folder and a temporary copy behind. --resume warns about step-30 by name, removes the
    leftovers, continues from step 20 and ends exactly like the uninterrupted run."""
    from textgen_cli.training import checkpoint

    class Killed(BaseException):
        pass

    real_save = checkpoint.save

    def killed_after_step_30(folder, step, *args, **kwargs):
        path = real_save(folder, step, *args, **kwargs)
        if step == 30:
            raise Killed
        return path

    monkeypatch.setattr(checkpoint, "save", killed_after_step_30)
    with pytest.raises(Killed):
        textgen("run.name=dmg", "checkpoint.keep_last=3", cwd=tmp_path)
    monkeypatch.setattr(checkpoint, "save", real_save)
    work = Path("runs/dmg/pretrain.partial")
    assert checkpoint_names(tmp_path / work) == ["latest", "step-0000010", "step-0000020", "step-0000030"]
    newest = work / "checkpoints" / "step-0000030"
    problem = damage(tmp_path / newest)
    (tmp_path / work / "checkpoints" / ".tmp-step-0000040").mkdir()
    (tmp_path / work / "checkpoints" / ".tmp-step-0000040" / "model.safetensors").write_bytes(b"\0" * 4096)
    (tmp_path / work / ".metrics.jsonl.tmp").write_text("half")

    resumed = textgen("run.name=dmg", "checkpoint.keep_last=3", "--resume", cwd=tmp_path)
    assert resumed.rc == 0, resumed.err
    warning = next(line for line in resumed.err.splitlines() if line.startswith("warning: checkpoint"))
    print(warning)
    assert (
        warning
        == f"warning: checkpoint {newest} is damaged ({problem}); it was moved to damaged-step-0000030 and the run falls back to the newest intact checkpoint"
    )
    assert (
        "removed what an interrupted write left behind: checkpoints/.tmp-step-0000040, .metrics.jsonl.tmp"
        in resumed.err
    )
    assert f"resuming from {work / 'checkpoints' / 'step-0000020'}" in resumed.err
    assert_same_training(reference, tmp_path / "runs" / "dmg" / "pretrain", min_lines=(8, 3))


def test_a_checkpoint_with_no_intact_file_is_never_resumed_from(tmp_path):
    """Unit level: newest_valid goes down the list; a checkpoint without a manifest (written before
    checksums existed) is checked for completeness only."""
    from textgen_cli.training import checkpoint

    folder = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        path = folder / f"step-{step:07d}"
        path.mkdir(parents=True)
        for name in checkpoint.REQUIRED_FILES:
            (path / name).write_text(f"{name} of step {step}")
        checkpoint.write_manifest(path)
    (folder / "latest").write_text("step-0000003")
    (folder / "step-0000003" / "state.json").write_text("changed")
    (folder / "step-0000002" / "manifest.json").unlink()
    (folder / "step-0000002" / "rng.pt").unlink()
    warnings: list[str] = []
    assert checkpoint.newest_valid(tmp_path, warnings.append) == folder / "step-0000001"
    assert [w.split(" is damaged ")[1] for w in warnings] == [
        f"(state.json has 7 bytes, {len('state.json of step 3')} when it was saved); it was moved to damaged-step-0000003 and the run falls back to the newest intact checkpoint",
        "(rng.pt is missing); it was moved to damaged-step-0000002 and the run falls back to the newest intact checkpoint",
    ]
    (folder / "step-0000001" / "manifest.json").unlink()
    assert (
        checkpoint.newest_valid(tmp_path, warnings.append) == folder / "step-0000001"
    )  # no manifest: complete is enough
    assert sorted(p.name for p in folder.iterdir()) == [
        "damaged-step-0000002",
        "damaged-step-0000003",
        "latest",
        "step-0000001",
    ]
