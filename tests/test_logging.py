"""Log lines go through the standard `logging` module on stderr: -q leaves errors and the final
result only, -v adds debug detail and the libraries' warnings, and --json keeps stdout clean."""

from __future__ import annotations

import json
import logging

import pytest

from harness import textgen, write_tiny_pretrain


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("logging")
    write_tiny_pretrain(folder, pretrain={"steps": 2}, checkpoint={"every": 0})
    return folder


def test_quiet_prints_the_result_and_nothing_else(tiny):
    result = textgen(["-q", "pretrain", "--recipe", "tiny.yaml", "run.name=quiet"], cwd=tiny)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("pretrain finished: runs/quiet/pretrain/final")


def test_verbose_adds_debug_detail_and_json_stays_clean(tiny):
    result = textgen(["pretrain", "--recipe", "tiny.yaml", "run.name=loud", "--verbose", "--json"], cwd=tiny)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["steps"] == 2  # stdout holds the JSON document only
    assert "locked runs/loud/pretrain.lock" in result.stderr  # a debug line
    assert "data: 300 records from" in result.stderr
    assert "validation loss before training" in result.stderr  # the usual lines stay


def test_errors_still_show_under_quiet(tiny):
    result = textgen(["pretrain", "-q", "--recipe", "tiny.yaml", "model.layrs=3"], cwd=tiny)
    assert result.returncode == 2
    assert result.stderr.startswith("error: command line override: unknown key 'model.layrs'")


def test_verbose_and_quiet_together_is_an_error(tiny):
    result = textgen(["-v", "pretrain", "-q", "--recipe", "tiny.yaml"], cwd=tiny)
    assert result.returncode == 2
    assert "error: --verbose and --quiet cannot be combined; choose one" in result.stderr


def test_library_warnings_are_silenced_unless_verbose():
    import transformers

    from textgen_cli.core.progress import configure_logging, logger, quiet_libraries

    try:
        configure_logging("verbose")
        quiet_libraries()
        assert transformers.utils.logging.get_verbosity() == logging.WARNING
        assert logger.isEnabledFor(logging.DEBUG)
        configure_logging("normal")
        quiet_libraries()
        assert transformers.utils.logging.get_verbosity() == logging.ERROR
        assert logger.isEnabledFor(logging.INFO) and not logger.isEnabledFor(logging.DEBUG)
        configure_logging("quiet")
        assert not logger.isEnabledFor(logging.WARNING) and logger.isEnabledFor(logging.ERROR)
    finally:
        configure_logging("normal")
