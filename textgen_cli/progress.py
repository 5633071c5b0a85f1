"""Progress on stderr: a rich bar on a terminal, plain periodic lines otherwise (CI logs stay readable)."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def log(message: str, stream: TextIO | None = None) -> None:
    print(message, file=stream or sys.stderr, flush=True)


class Reporter:
    """Shows step, loss, learning rate, tokens/s and ETA for one stage."""

    def __init__(self, stage: str, total_steps: int, start_step: int = 0, stream: TextIO | None = None, enabled: bool = True):
        self.enabled = enabled  # only rank 0 of a distributed run reports
        self.stage = stage
        self.total = total_steps
        self.stream = stream or sys.stderr
        self.started = time.perf_counter()
        self.start_step = start_step
        self.progress = None
        if enabled and self.stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

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
            log(f"{self.stage} step {step}/{self.total} {_status(metrics)} eta {format_duration(self.eta(step))}", self.stream)

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
    """transformers and datasets draw their own progress bars on load and save; ours is enough."""
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
