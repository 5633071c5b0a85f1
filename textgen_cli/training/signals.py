"""SIGINT / SIGTERM during training: checkpoint at the next step boundary, then exit."""

from __future__ import annotations

import os
import signal
import threading
from typing import TYPE_CHECKING, Any

from textgen_cli.core.progress import log

if TYPE_CHECKING:
    pass


class StopSignals:
    """The first SIGINT / SIGTERM asks the loop to checkpoint at the next step boundary and exit
    with 128 + signal; a second one exits at once (checkpoint writes are atomic, so nothing breaks)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            os._exit(128 + signum)
        self.received = signum
        log(
            f"{signal.Signals(signum).name}: saving a checkpoint at the end of this step (send it again to exit at once)"
        )

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
