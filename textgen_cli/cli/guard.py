"""Errors into exit codes, one place for every command: 0 success, 2 a user's mistake (recipe, data,
checkpoint, path: one line naming it, no traceback unless --debug), 1 anything else, 128 + N on a
signal. And the verbosity that -v / -q choose.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import Any

import typer

from textgen_cli.core.errors import DiskFull, Interrupted, TrainingDiverged, UserError, WorkerDied

# -v / -q given before the command (`textgen -v pretrain ...`); set by app.root() on every invocation
ROOT_FLAGS = {"verbose": False, "quiet": False}


def verbosity(verbose: bool, quiet: bool) -> str:
    verbose, quiet = verbose or ROOT_FLAGS["verbose"], quiet or ROOT_FLAGS["quiet"]
    if verbose and quiet:
        raise UserError("--verbose and --quiet cannot be combined; choose one")
    return "verbose" if verbose else "quiet" if quiet else "normal"


def guarded(debug: bool, action: Callable[[], Any], verbose: bool = False, quiet: bool = False) -> Any:
    """Exit codes: 0 success, 2 bad input (recipe, data, checkpoint, path), 1 anything else."""
    try:
        from textgen_cli.core.progress import configure_logging

        configure_logging(verbosity(verbose, quiet))
        return action()
    except UserError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    except Interrupted as exc:
        print(f"{exc}", file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None
    except (TrainingDiverged, DiskFull, WorkerDied) as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise typer.Exit(130) from None
    except Exception as exc:
        if debug:
            raise
        print(f"error: {type(exc).__name__}: {exc} (run again with --debug for the traceback)", file=sys.stderr)
        raise typer.Exit(1) from None
