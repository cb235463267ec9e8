"""Stopping a run cleanly: SIGTERM (a pre-emption, a launcher passing it on) or a first Ctrl-C asks for a
stop, which the loop honours after a save and the other stages at their next safe point; a second Ctrl-C
aborts at once.
"""

import os
import signal
import socket
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


def _abort() -> None:
    # (what the first stop had written stays; what was being written is left unfinished)
    print("\nCtrl-C again: aborted at once; the same command resumes", file=sys.stderr, flush=True)
    os._exit(130)  # at once: no cleanup that could hang (the first Ctrl-C asked for a clean stop)


def _watch_for_a_second_sigint() -> None:
    """Abort on the next SIGINT even while the main thread is inside native code (an XLA compile, a
    checkpoint wait, a thread join at exit), where Python handlers wait: the interpreter's C-level handler
    writes each signal's number to the wakeup fd at once, and a daemon thread reads it."""
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set the wakeup fd (a handler always runs there)
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)

    def watch(keep_open=writer) -> None:  # (a socket closes its fd when collected)
        while True:
            if signal.SIGINT in reader.recv(64):  # bytes: the numbers of the signals that arrived
                _abort()

    threading.Thread(target=watch, name="second-ctrl-c", daemon=True).start()


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
            # after a Ctrl-C the process is on its way out: a second one still aborts (not a
            # KeyboardInterrupt traceback from an atexit hook that joins a compile thread)
            if not (signum == signal.SIGINT and self.reason == "Ctrl-C" and self.event.is_set()):
                signal.signal(signum, handler)

    def _on_sigterm(self, *_) -> None:
        self.reason = "SIGTERM"
        self.event.set()

    def _on_sigint(self, *_) -> None:
        if self.event.is_set():
            _abort()
        self.reason = "Ctrl-C"
        _watch_for_a_second_sigint()
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
