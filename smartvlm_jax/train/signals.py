"""Stopping a run cleanly: SIGTERM (a pre-emption, a launcher passing it on) or a first Ctrl-C asks for a
stop, which the loop honours after a save and the other stages at their next safe point; a second Ctrl-C
aborts at once.
"""

import os
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from smartvlm_jax import parallel

T = TypeVar("T")


class Stopped(Exception):
    """A stop request (SIGTERM, a first Ctrl-C) met at a safe point outside the train steps: the data
    build, the feature extraction or an evaluation. What was finished is kept (the store's shards, the
    checkpoints), so the same command resumes."""

    def __init__(self, reason: str, stage: str):
        super().__init__(f"{reason} during {stage}")
        self.reason, self.stage = reason, stage


class StopSignal:
    """The stop that SIGTERM or a first Ctrl-C (SIGINT) asks for: while entered, either sets :attr:`event`
    (the previous handlers come back on exit); a second Ctrl-C aborts at once, saving nothing. A caller
    that passes its own ``event`` handles the signals itself (only the main thread may install a handler:
    the sweep's rows run in threads)."""

    def __init__(self, event: threading.Event | None = None):
        self._own = event is None
        self.event = threading.Event() if event is None else event
        self.reason = "SIGTERM"  # what asked for the stop, for console lines
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignal":
        if self._own:
            self._previous = {
                signal.SIGTERM: signal.signal(signal.SIGTERM, self._on_sigterm),
                signal.SIGINT: signal.signal(signal.SIGINT, self._on_sigint),
            }
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _on_sigterm(self, *_) -> None:
        self.reason = "SIGTERM"
        self.event.set()

    def _on_sigint(self, *_) -> None:
        if self.event.is_set():
            print("\nCtrl-C again: aborted, nothing saved", file=sys.stderr, flush=True)
            os._exit(130)  # at once: no cleanup that could hang (the first Ctrl-C asked for a clean stop)
        self.reason = "Ctrl-C"
        # printed, not logged: it must show whether or not the command routed its log lines to the console
        message = "Ctrl-C: stopping at the next safe point (Ctrl-C again aborts at once)"
        print(f"\n{message}", file=sys.stderr, flush=True)
        self.event.set()

    def requested(self) -> bool:
        """Whether any process was asked to stop: every process must stop at the same step, or one waits
        in a save's barriers for ever."""
        return parallel.any_process(self.event.is_set())

    def check(self, stage: str) -> None:
        """Raise :class:`Stopped` naming ``stage`` when a stop was requested."""
        if self.requested():
            raise Stopped(self.reason, stage)

    def guard(self, items: Iterable[T], stage: str) -> Iterator[T]:
        """``items``, with :meth:`check` before each: an iteration that stops between two items."""
        for item in items:
            self.check(stage)
            yield item
