"""The command line itself: help is fast (no torch, no transformers), `python -m` works."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness import cli_env, textgen
from textgen_cli import __version__

HEAVY = ("torch", "transformers", "accelerate", "datasets")

PROBE = """
import sys
sys.argv = ["textgen", *{args!r}]
from textgen_cli.cli.app import app
try:
    app()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted({{name.split(".")[0] for name in sys.modules}} & {heavy!r})
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
sys.exit(code or 0)
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["pretrain", "--help"],
        ["finetune", "--help"],
        ["recipes", "--help"],
        ["recipes"],
        ["recipes", "keys"],
        ["--version"],
    ],
)
def test_help_does_not_import_torch_or_transformers(args):
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(args=args, heavy=set(HEAVY))], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    heavy_line = [line for line in result.stderr.splitlines() if line.startswith("HEAVY=")]
    assert heavy_line == ["HEAVY="], f"{args}: imported {heavy_line}"
    assert result.stdout


def test_help_importtime_has_no_torch(tmp_path):
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "textgen_cli", "pretrain", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    imported = {
        line.split("|")[-1].strip().split(".")[0]
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "typer" in imported  # the probe works
    assert not imported & {"torch", "transformers"}


def test_python_m_textgen_cli_help(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "textgen_cli", "--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    for verb in ("pretrain", "finetune", "recipes"):
        assert verb in result.stdout


def test_installed_entry_point_help_and_version(tmp_path):
    result = textgen(["--help"], cwd=tmp_path)
    assert result.returncode == 0 and "pretrain" in result.stdout
    result = textgen(["pretrain", "--help"], cwd=tmp_path)
    assert result.returncode == 0 and "--recipe" in result.stdout and "--json" in result.stdout
    result = textgen(["--version"], cwd=tmp_path)
    assert result.returncode == 0 and __version__ in result.stdout


def test_recipes_lists_shipped_recipes_with_descriptions(tmp_path):
    result = textgen(["recipes"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "sora.yaml" in result.stdout and "chatgpt.yaml" in result.stdout
    assert "encoder-decoder" in result.stdout and "decoder-only" in result.stdout


def test_the_distribution_is_textgen_cli_and_the_command_textgen():
    """`textgen` on PyPI is another project: the distribution is `textgen-cli`, its extras are
    `textgen-cli[...]`, and the command it installs is still `textgen`."""
    from pathlib import Path

    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["name"] == "textgen-cli"
    assert project["scripts"] == {"textgen": "textgen_cli.cli.app:main"}
    assert {"tensorboard", "wandb", "mlflow"} <= set(project["optional-dependencies"])


@pytest.mark.parametrize(
    ("words", "cword", "expected"),
    [
        ("textgen fin", 1, ["finetune"]),
        (
            "textgen pretrain --recipe sora-",
            3,
            ["sora-4+4.yaml", "sora-bart.yaml", "sora-chat.yaml", "sora-long.yaml", "sora-pretrained.yaml"],
        ),
    ],
)
def test_shell_completion_completes_commands_and_shipped_recipes(words, cword, expected):
    """What the script of `textgen --install-completion` asks the program for on <TAB> (bash)."""
    env = cli_env(_TEXTGEN_COMPLETE="complete_bash", COMP_WORDS=words, COMP_CWORD=str(cword))
    result = textgen([], env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == expected


def test_show_completion_prints_the_script_for_the_shell():
    # Typer detects the shell from the parent process (`sh` under make, as in CI); its testing switch
    # turns detection off, and the option then takes the shell as its value
    env = cli_env(_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    result = textgen(["--show-completion", "bash"], env=env)
    assert result.returncode == 0, result.stderr
    assert "complete -o default -F _textgen_completion textgen" in result.stdout
