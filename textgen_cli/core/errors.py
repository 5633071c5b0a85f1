"""Errors a user can cause. The CLI prints their message and exits with code 2, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem in something the user gave us: a recipe, a data file, a checkpoint, a path."""

    exit_code = 2


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient. Not the user's input, so the exit code is 1."""


class DiskFull(RuntimeError):
    """The filesystem filled up while a result was being written. Not the user's input, so the exit
    code is 1; the message names the path, the space needed and how to continue (docs/reliability.md)."""

    exit_code = 1


class WorkerDied(RuntimeError):
    """A worker process was killed (the out-of-memory killer, usually). Not the user's input: exit code 1."""


class Interrupted(Exception):
    """SIGINT or SIGTERM: a checkpoint was saved; exit with 128 + the signal number (130 / 143)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
