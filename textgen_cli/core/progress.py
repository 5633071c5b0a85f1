"""Progress and log lines on stderr: a rich bar and rich's log handler on a terminal, plain lines
otherwise (CI logs stay readable). stdout is left to results (`--json`).

Every message goes through the `textgen` logger of the standard `logging` module, so `-v/--verbose`
(debug detail, the libraries' warnings) and `-q/--quiet` (errors and results only) apply to all of
them, and a program that imports textgen can route them where it likes.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from typing import Any, TextIO

logger = logging.getLogger("textgen")
VERBOSITY = {"quiet": logging.ERROR, "normal": logging.INFO, "verbose": logging.DEBUG}
_verbosity = "normal"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each message: rich's live display and test
    harnesses swap it after the handler is made."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def configure_logging(verbosity: str = "normal") -> None:
    """Set textgen's log level and handler, and how loud the libraries are: `quiet`, `normal` or
    `verbose`. Called by every command; a program that imports textgen gets `normal` on first use."""
    global _verbosity
    _verbosity = verbosity
    logger.handlers.clear()
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(
            console=Console(stderr=True), show_time=False, show_path=False, show_level=False, markup=False
        )
    else:
        handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(VERBOSITY[verbosity])
    logger.propagate = False
    if verbosity == "verbose":
        # the libraries' warnings, silenced by default, are wanted now (transformers reads the
        # variable when it is first imported; quiet_libraries sets it again if it already was)
        os.environ["TRANSFORMERS_VERBOSITY"] = "warning"
        warnings.simplefilter("default")
        logging.captureWarnings(True)
    else:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        if verbosity == "quiet":
            warnings.simplefilter("ignore")


def verbose() -> bool:
    return _verbosity == "verbose"


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def log(message: str, stream: TextIO | None = None, level: int = logging.INFO) -> None:
    """One line on stderr through the `textgen` logger (or straight to `stream` when one is given).
    Callers that still start a message with "warning:" get the WARNING level for it."""
    if stream is not None and stream is not sys.stderr:
        print(message, file=stream, flush=True)
        return
    if not logger.handlers:
        configure_logging()
    if message.startswith("warning:"):
        level = max(level, logging.WARNING)
    logger.log(level, message)


def debug(message: str) -> None:
    """Detail shown with -v/--verbose only."""
    log(message, level=logging.DEBUG)


class Reporter:
    """Shows step, loss, learning rate, tokens/s and ETA for one stage."""

    def __init__(
        self, stage: str, total_steps: int, start_step: int = 0, stream: TextIO | None = None, enabled: bool = True
    ):
        self.enabled = enabled  # only rank 0 of a distributed run reports
        self.stage = stage
        self.total = total_steps
        self.stream = stream or sys.stderr
        self.started = time.perf_counter()
        self.start_step = start_step
        self.progress = None
        if not logger.handlers:
            configure_logging()
        # -q: no progress at all, the bar included
        self.enabled = enabled and logger.isEnabledFor(logging.INFO)
        if self.enabled and self.stream.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn(f"[bold]{stage}[/bold]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
            )
            self.task = self.progress.add_task(stage, total=total_steps, completed=start_step, status="")
            self.progress.start()

    def eta(self, step: int) -> float:
        done = step - self.start_step
        elapsed = time.perf_counter() - self.started
        return elapsed / done * (self.total - step) if done > 0 else 0.0

    def step(self, step: int, metrics: dict[str, Any] | None) -> None:
        """Advance to `step`; `metrics` is given on logging steps only."""
        if not self.enabled:
            return
        if self.progress is not None:
            status = _status(metrics) if metrics else None
            self.progress.update(self.task, completed=step, **({"status": status} if status else {}))
        elif metrics:
            log(
                f"{self.stage} step {step}/{self.total} {_status(metrics)} eta {format_duration(self.eta(step))}",
                self.stream,
            )

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.console.print(text)
        else:
            log(text, self.stream)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _status(metrics: dict[str, Any]) -> str:
    parts = []
    for key, fmt in (("loss", "loss {:.4f}"), ("lr", "lr {:.2e}"), ("tokens_per_s", "tok/s {:,.0f}")):
        if key in metrics:
            parts.append(fmt.format(metrics[key]))
    return " ".join(parts)


def quiet_libraries() -> None:
    """transformers and datasets draw their own progress bars on load and save; ours is enough. Their
    warnings are silenced too, except with -v/--verbose."""
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    if verbose():  # -v: their warnings are wanted
        transformers.utils.logging.set_verbosity_warning()
        datasets.utils.logging.set_verbosity_warning()
    else:
        transformers.utils.logging.set_verbosity_error()
