"""Experiment trackers (`train.report_to`, through accelerate's tracker classes): TensorBoard event
files, a W&B offline run and an MLflow file store each hold the hyperparameters and the same
metrics series as metrics.jsonl, read back here; a missing package is a clear error."""

from __future__ import annotations

import glob
import json
import struct

import pytest

from harness import moby_lines, write_recipe


@pytest.fixture
def recipe(tmp_path, monkeypatch):
    (tmp_path / "train.txt").write_text("".join(moby_lines(200)), encoding="utf-8")
    (tmp_path / "val.txt").write_text("".join(moby_lines(40, "validation")), encoding="utf-8")
    write_recipe(
        tmp_path / "tiny.yaml",
        stages=["pretrain"],
        model={"context": 32},
        data={"pretrain": {"train": "train.txt", "validation": "val.txt"}},
        train={
            "batch_size": 8,
            "log_every": 5,
            "eval_every": 10,
            "eval_batches": 2,
            "lr": 0.002,
            "tensorboard": True,
            "report_to": ["wandb", "mlflow"],
        },
        pretrain={"steps": 20},
    )
    monkeypatch.chdir(tmp_path)
    # W&B offline and an MLflow file store, all under tmp_path: no account, no network, no home dir
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 asks for it to use a file store
    return tmp_path / "tiny.yaml"


def wandb_records(run_file: str) -> list:
    """The records of a W&B offline run file: a 7-byte header, then LevelDB log records (32 KiB
    blocks; each record a 7-byte header: crc, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2

    raw = open(run_file, "rb").read()
    assert raw[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        pending += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_every_tracker_holds_the_hyperparameters_and_the_metrics_series(recipe, tmp_path):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from textgen_cli.recipe import load_recipe
    from textgen_cli.training.pretrain import run_pretrain

    run_pretrain(load_recipe(str(recipe)))
    run = tmp_path / "runs" / "tiny" / "pretrain"
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in logged if "loss" in r]
    val_steps = [r["step"] for r in logged if "val_loss" in r]
    assert len(losses) == 4 and val_steps == [0, 10, 20]

    # TensorBoard (train.tensorboard: true, the older spelling): the events and the hparams file
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars("loss")] == losses
    assert [e.step for e in events.Scalars("val_loss")] == val_steps
    (hparams,) = glob.glob(str(run / "tensorboard" / "*" / "hparams.yml"))
    assert "train.lr: 0.002" in open(hparams).read()

    # W&B offline: the run file beside the stage's directory
    (run_file,) = glob.glob(str(run.parent / "wandb" / "offline-run-*" / "run-*.wandb"))
    records = wandb_records(run_file)
    config = {
        item.key: json.loads(item.value_json)
        for r in records
        if r.WhichOneof("record_type") == "config"
        for item in r.config.update
    }
    assert config["train.lr"] == 0.002 and config["model.family"] == "chatgpt" and config["stage"] == "pretrain"
    history = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    assert [(h["_step"], pytest.approx(h["loss"], rel=1e-6)) for h in history if "loss" in h] == losses
    assert [h["_step"] for h in history if "val_loss" in h] == val_steps

    # MLflow: the file store
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    (found,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert found.info.run_name == "pretrain" and found.info.status == "FINISHED"
    assert found.data.params["train.lr"] == "0.002" and found.data.params["pretrain.steps"] == "20"
    assert [
        (m.step, pytest.approx(m.value, rel=1e-6)) for m in client.get_metric_history(found.info.run_id, "loss")
    ] == losses


def test_a_tracker_without_its_package_is_a_clear_error(recipe, tmp_path, monkeypatch):
    import accelerate.utils

    from textgen_cli.core.errors import UserError
    from textgen_cli.recipe import load_recipe
    from textgen_cli.training.pretrain import run_pretrain

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    with pytest.raises(
        UserError,
        match=r"^train.report_to: wandb needs its package, which is not installed: pip install 'textgen-cli\[wandb\]'$",
    ):
        run_pretrain(load_recipe(str(recipe)))
    assert not (tmp_path / "runs" / "tiny" / "pretrain.partial").exists()
    assert not (tmp_path / "runs" / "tiny" / "pretrain.lock").exists()


def test_an_unknown_tracker_is_named(recipe):
    from textgen_cli.core.errors import UserError
    from textgen_cli.recipe import load_recipe

    with pytest.raises(
        UserError,
        match=r"command line override: key 'train.report_to': expected a list drawn from tensorboard, wandb, mlflow, got \['comet'\]",
    ):
        load_recipe(str(recipe), ["train.report_to=[comet]"])
