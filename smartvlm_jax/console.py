"""What a person watching a run sees: a quiet console, the whole log in the workdir, and progress.

**Where log lines go** (:func:`configure`, called once by ``smartvlm_jax.main``). The console shows the
project's own lines (loggers ``smartvlm_jax.*`` at INFO) and warnings or errors from anyone, except the
libraries in :data:`QUIET_LIBRARIES`; ``<workdir>/run.log`` gets every line: the project's DEBUG details
(stage timings, the head's parameter table, which kernels the towers run) and the libraries' INFO lines
(JAX's backend probing "Unable to initialize backend 'tpu'", TFDS's "Load dataset info" from each reader
thread, orbax's per-save lines, Python warnings such as JAX's "ToProto is not implemented for thunk kind:
onednn-fusion" for an executable XLA:CPU cannot store in the compilation cache). ``--verbosity=1`` (absl's
``-v``) puts run.log's lines on the console as well, ``-v 2`` adds the libraries' DEBUG lines and ``-v -1``
leaves only warnings. All of it is logging configuration (handlers, levels, logger names), never parsing
of output. In a multi-process run only process 0 prints progress and INFO lines; the others print
warnings and errors, and each process keeps its own log file (``run.log``, ``run.<k>.log``).

**Progress** (:class:`Progress`): a tqdm bar when stderr is a terminal; otherwise (CI, ``nohup``, SLURM
logs) a plain line every :data:`PLAIN_EVERY_S` seconds and one when the stage ends, so a log file holds no
carriage returns or cursor moves. Work marked ``warmup`` (a step that compiles) is left out of the rate and
the ETA.
"""

from __future__ import annotations

import dataclasses
import logging
import logging.handlers
import os
import pathlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, TypeVar

import tqdm

from smartvlm_jax.workdir import Workdir

T = TypeVar("T")

PROJECT = "smartvlm_jax"
# The project's loggers whose INFO lines are details for run.log, not the console: which kernels the
# towers run and where their build went.
DETAIL_LOGGERS: tuple[str, ...] = ("smartvlm_jax.towers",)
# Libraries whose warnings a user cannot act on: run.log only (errors still reach the console).
# py.warnings: Python warnings (``logging.captureWarnings``), e.g. JAX's "Error writing persistent
# compilation cache entry"; transformers: tokenizer notices (token ids, deprecations).
QUIET_LIBRARIES: tuple[str, ...] = ("py.warnings", "transformers")
# Progress's own lines: what a bar shows, as plain text.
PROGRESS_LOGGER = "smartvlm_jax.progress"
# Seconds between two plain progress lines of a stage (a 3-hour extraction writes ~360).
PLAIN_EVERY_S = 30.0
# Environment variables read by native code when it loads, set (unless already set) for the quiet console:
# TF_CPP_MIN_LOG_LEVEL=1 drops the C++ runtime's INFO lines (XLA's device set-up), keeping its warnings;
# TRANSFORMERS_NO_ADVISORY_WARNINGS=1 drops transformers' import-time advice ("PyTorch was not found").
QUIET_ENVIRONMENT: dict[str, str] = {"TF_CPP_MIN_LOG_LEVEL": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
RUN_LOG_FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"

log = logging.getLogger(PROGRESS_LOGGER)


def interactive(stream: IO | None = None) -> bool:
    """Whether ``stream`` (default stderr) is a terminal that can redraw a progress bar in place."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM", "") != "dumb"


def _under(name: str, prefixes: str | tuple[str, ...]) -> bool:
    """Whether logger ``name`` is one of ``prefixes`` or below one of them."""
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def shows_on_console(
    record: logging.LogRecord, verbosity: int, lead: bool = True, bars: bool = False
) -> bool:
    """The console's rule: whether a record is printed (every record goes to run.log).

    ``verbosity``: -1 warnings only, 0 the quiet default, 1 everything run.log gets. ``lead``: process 0
    (the others print warnings and errors only). ``bars``: progress bars are drawn, so the progress
    logger's plain lines would repeat them.
    """
    if bars and record.name == PROGRESS_LOGGER:
        return False
    if not lead or verbosity < 0:
        return record.levelno >= logging.WARNING
    if verbosity >= 1:
        return True
    if _under(record.name, PROJECT) and not _under(record.name, DETAIL_LOGGERS):
        return record.levelno >= logging.INFO
    if _under(record.name, QUIET_LIBRARIES):
        return record.levelno >= logging.ERROR
    return record.levelno >= logging.WARNING


class _ConsoleFilter(logging.Filter):
    def __init__(self, verbosity: int, bars: bool) -> None:
        super().__init__()
        self.verbosity, self.bars, self.lead = verbosity, bars, True

    def filter(self, record: logging.LogRecord) -> bool:
        return shows_on_console(record, self.verbosity, self.lead, self.bars)


class _ConsoleFormatter(logging.Formatter):
    """The project's lines as they are; "warning: " / "error: " before warnings and errors, and the
    logger's name before a library's line."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if not _under(record.name, PROJECT):
            text = f"[{record.name}] {text}"
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {text}"
        return text


class _ConsoleHandler(logging.StreamHandler):
    """Writes through ``tqdm.write`` while bars are drawn, so a line never lands inside a bar."""

    def __init__(self, stream: IO, bars: bool) -> None:
        super().__init__(stream)
        self.bars = bars

    def emit(self, record: logging.LogRecord) -> None:
        if not self.bars:
            super().emit(record)
            return
        try:
            tqdm.tqdm.write(self.format(record), file=self.stream)
        except Exception:  # logging's own convention: report, never raise from emit
            self.handleError(record)


class _LockedRunLog(logging.Handler):
    """``run.log`` once this process holds the workdir's lock (``Workdir.held_here``): records before
    are held, and written in order when it does; never opened if it never does (a run refused because
    another run holds the workdir leaves that run's log as it was)."""

    def __init__(self, path: pathlib.Path, workdir: Workdir) -> None:
        super().__init__()
        self.baseFilename = str(path)  # as a FileHandler names its file (Console.run_log, worker_routing)
        self._workdir = workdir
        self._held: list[logging.LogRecord] = []
        self._file: logging.FileHandler | None = None

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        super().setFormatter(fmt)
        if self._file is not None:
            self._file.setFormatter(fmt)

    def emit(self, record: logging.LogRecord) -> None:
        if self._file is None:
            self._held.append(record)
            if self._workdir.held_here():
                self._open()
            return
        self._file.emit(record)

    def _open(self) -> None:
        self._file = logging.FileHandler(self.baseFilename, encoding="utf-8")
        self._file.setFormatter(self.formatter)
        for record in self._held:
            self._file.emit(record)
        self._held.clear()

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._held.clear()
        super().close()


@dataclasses.dataclass
class Console:
    """The handlers :func:`configure` installed; :meth:`set_process` completes them once JAX has started."""

    workdir: Workdir | None
    verbosity: int
    bars: bool
    console: logging.Handler
    pending: logging.handlers.MemoryHandler
    log_file: logging.Handler | None = None

    def set_process(self, process_index: int, wait_for_lock: bool = False) -> None:
        """Open this process's log file (``run.log``, ``run.<k>.log``) with the lines so far, and quiet
        the console of processes other than 0.

        ``wait_for_lock`` (process 0 of a run): ``run.log`` opens only once this process holds the
        workdir (``Workdir.lock``), the lines until then held in memory. A run refused because another
        holds the workdir then never writes into that run's log; what it held is dropped (its console
        shows the error line)."""
        for f in self.console.filters:
            if isinstance(f, _ConsoleFilter):
                f.lead = process_index == 0
        root = logging.getLogger()
        if self.workdir is not None and self.log_file is None:
            self.workdir.root.mkdir(parents=True, exist_ok=True)
            path = self.workdir.run_log(process_index)
            if wait_for_lock and process_index == 0:
                self.log_file = _LockedRunLog(path, self.workdir)
            else:
                self.log_file = logging.FileHandler(path, encoding="utf-8")
            self.log_file.setFormatter(logging.Formatter(RUN_LOG_FORMAT))
            self.pending.setTarget(self.log_file)
            self.pending.flush()
            root.addHandler(self.log_file)
        root.removeHandler(self.pending)
        self.pending.close()

    @property
    def run_log(self) -> str | None:
        """The log file's path, once :meth:`set_process` opened it."""
        return getattr(self.log_file, "baseFilename", None)


def configure(
    workdir: str | os.PathLike | None,
    verbosity: int = 0,
    *,
    stream: IO | None = None,
    bars: bool | None = None,
) -> Console:
    """Route every log record of this process: the console (``stream``, default stderr) and run.log.

    Replaces the root logger's handlers (absl's prefixed stderr handler among them). Lines logged before
    :meth:`Console.set_process` are held in memory and written to the log file it opens (the process index,
    which names the file, is known only once multi-process JAX has started). With ``verbosity`` <= 0 the
    variables of :data:`QUIET_ENVIRONMENT` are set where unset, so call this before JAX loads. ``bars``:
    whether progress is drawn as bars (default: ``stream`` is a terminal).
    """
    stream = sys.stderr if stream is None else stream
    bars = interactive(stream) if bars is None else bars
    if verbosity <= 0:
        for name, value in QUIET_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    console = _ConsoleHandler(stream, bars)
    console.addFilter(_ConsoleFilter(verbosity, bars))
    console.setFormatter(_ConsoleFormatter("%(message)s"))
    # Held until the log file opens; capacity is only when it flushes (never without a target).
    pending = logging.handlers.MemoryHandler(capacity=1 << 30, flushLevel=logging.CRITICAL + 1)
    root.addHandler(console)
    root.addHandler(pending)
    root.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
    logging.getLogger(PROJECT).setLevel(logging.DEBUG)  # the project's details go to run.log
    logging.getLogger("absl").setLevel(logging.NOTSET)  # absl's --verbosity set it; the root decides now
    logging.captureWarnings(True)
    _route_transformers()
    return Console(None if workdir is None else Workdir(workdir), verbosity, bars, console, pending)


def configure_command(verbosity: int = -1) -> None:
    """:func:`configure` for a command that owns no run log (evaluate, predict: warnings as the other
    commands print them, "warning: ..."), unless the process routes its logging itself (a caller's own
    handlers, pytest's). Logging's default handler, which absl installs through ``logging.basicConfig``
    when a library logs during import ("WARNING:name:message"), counts as none."""
    defaults = [
        h
        for h in logging.getLogger().handlers
        if type(h) is logging.StreamHandler and getattr(h.formatter, "_fmt", None) == logging.BASIC_FORMAT
    ]
    if len(defaults) == len(logging.getLogger().handlers):
        configure(None, verbosity).set_process(0)


@dataclasses.dataclass(frozen=True)
class WorkerRouting:
    """This process's routing, for a data-loader worker process to install (grain's ``worker_init_fn``):
    the console's rule on stderr (plain lines, no bars) and every line appended to the run's log file.
    Holds only numbers and a path, so it pickles into spawned workers."""

    verbosity: int
    lead: bool
    run_log: str | None

    def __call__(self, worker_index: int = 0, worker_count: int = 1) -> None:
        """Install the routing in this (worker) process; grain passes the worker's index and count."""
        del worker_index, worker_count  # the same routing for every worker
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        console = _ConsoleHandler(sys.stderr, bars=False)
        rule = _ConsoleFilter(self.verbosity, bars=False)
        rule.lead = self.lead
        console.addFilter(rule)
        console.setFormatter(_ConsoleFormatter("%(message)s"))
        root.addHandler(console)
        if self.run_log is not None:
            log_file = logging.FileHandler(self.run_log, mode="a", encoding="utf-8")
            log_file.setFormatter(logging.Formatter(RUN_LOG_FORMAT))
            root.addHandler(log_file)
        root.setLevel(logging.DEBUG if self.verbosity >= 2 else logging.INFO)
        logging.getLogger(PROJECT).setLevel(logging.DEBUG)
        logging.captureWarnings(True)


def worker_routing() -> WorkerRouting | None:
    """The routing :func:`configure` installed in this process, for its worker processes; None when it
    installed none (a library user's own logging, which their workers' set-up is theirs to choose)."""
    root = logging.getLogger()
    console = next((h for h in root.handlers if isinstance(h, _ConsoleHandler)), None)
    if console is None:
        return None
    rule = next(f for f in console.filters if isinstance(f, _ConsoleFilter))
    log_file = next((h for h in root.handlers if isinstance(h, (logging.FileHandler, _LockedRunLog))), None)
    return WorkerRouting(rule.verbosity, rule.lead, getattr(log_file, "baseFilename", None))


def _route_transformers() -> None:
    """transformers prints through its own stderr handler and does not propagate: send its records to
    the root's handlers instead (imported here, if installed: the text towers import it anyway)."""
    try:
        from transformers.utils import logging as hf_logging  # optional, heavy
    except ImportError:
        return
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()


def format_seconds(seconds: float) -> str:
    """A duration for a progress line: "42 s", "7 min 5 s", "2 h 03 min"; "?" when unknown."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN or infinite
        return "?"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Progress of one stage of ``total`` units: a tqdm bar on a terminal, plain log lines otherwise.

    ``update(n)`` counts units done; ``update(n, warmup=True)`` counts units whose time is left out of the
    rate and the ETA (the step that compiles): both restart after it. ``status(text)`` shows a note
    ("compiling") until the next update. ``close(summary)`` ends the stage: the bar stays on screen with the
    summary beside it (``leave``), and a closing line is logged (units, seconds, rate, summary). Plain lines
    go to the :data:`PROGRESS_LOGGER` logger every ``every_s`` seconds, bars or not (the console shows them
    only without bars; run.log keeps them). Disabled (``enabled=False``: processes other than 0) it does
    nothing. Use as a context manager, or :meth:`iterate`.

    Args:
      desc: the stage, as the line starts ("features train", "epoch 3/12").
      total: units in the stage (>= 0).
      unit: their name, plural ("samples", "steps", "rows").
      initial: units already done (a resumed stage).
      warmup_name: what warm-up work is, for the closing line ("compiling": "after 2.0 s compiling").
      leave: keep the finished bar and log a closing line; False for a transient stage (evaluation).
      enabled: False: no bar, no lines.
      bars: draw a tqdm bar; default: stderr is a terminal (:func:`interactive`).
      every_s: seconds between plain lines.
      stream: where the bar is drawn (default stderr).
      clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self,
        desc: str,
        total: int,
        unit: str,
        *,
        initial: int = 0,
        warmup_name: str = "warm-up",
        leave: bool = True,
        enabled: bool = True,
        bars: bool | None = None,
        every_s: float = PLAIN_EVERY_S,
        stream: IO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.desc, self.total, self.unit, self.n = desc, int(total), unit, int(initial)
        self.initial = int(initial)
        self.warmup_name, self.leave, self.enabled = warmup_name, leave, enabled
        self.every_s, self._clock = every_s, clock
        self._start = self._timed_start = self._last_line = self._last_update = clock()
        self._timed_from = self.n  # units done when timing (re)started
        self._timed_updates = 0  # updates since then
        self._warmup_s = 0.0
        self._postfix = ""
        self._bar = None
        stream = sys.stderr if stream is None else stream
        if enabled and (interactive(stream) if bars is None else bars):
            self._bar = tqdm.tqdm(
                total=self.total,
                initial=self.n,
                desc=desc,
                unit=f" {unit}",
                file=stream,
                leave=leave,
                dynamic_ncols=True,
                mininterval=0.2,
            )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def rate(self) -> float | None:
        """Units per second from the (re)start of timing to the last update; None before two timed
        updates. (Work is pipelined: the unit after the warm-up one was mostly done while that one was
        waited for, so a single interval reads fast, e.g. a resumed extraction's last partial batch.)"""
        done = self.n - self._timed_from
        elapsed = self._last_update - self._timed_start
        return done / elapsed if self._timed_updates >= 2 and done > 0 and elapsed > 0 else None

    def status(self, text: str) -> None:
        """A note beside the bar (and in the plain lines) until the next update: "compiling"."""
        self._postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text)

    def update(self, n: int = 1, *, warmup: bool = False, postfix: str | None = None) -> None:
        """``n`` more units done; ``warmup``: their time is not part of the rate (timing restarts after
        them); ``postfix``: the note beside the bar from now on ("loss 1.68")."""
        if not self.enabled:
            return
        self.n += n
        if postfix is not None:
            self._postfix = postfix
        now = self._last_update = self._clock()
        self._timed_updates += 1
        if warmup:
            self._warmup_s += now - self._timed_start
            self._timed_start, self._timed_from, self._timed_updates = now, self.n, 0
        if self._bar is not None:
            if warmup:  # tqdm's clock and average restart here, the units done kept as its start
                self._bar.reset()
                self._bar.n = self._bar.initial = self._bar.last_print_n = self.n
            else:
                self._bar.update(n)
            if postfix is not None or warmup:
                self._bar.set_postfix_str(self._postfix)
        if now - self._last_line >= self.every_s and self.n < self.total:
            self._last_line = now
            log.info("%s", self.line())

    def iterate(self, items: Iterable[T]) -> Iterator[T]:
        """Yields ``items``, counting one unit after each; closes the stage at the end."""
        with self:
            for item in items:
                yield item
                self.update(1)

    def line(self) -> str:
        """The plain line of the stage so far: "features train: 384/792 samples, 170 samples/s, ETA 2 s"."""
        rate = self.rate()
        if rate is None:
            text = f"{self.desc}: {self.n}/{self.total} {self.unit}"
        else:
            eta = format_seconds((self.total - self.n) / rate)
            text = f"{self.desc}: {self.n}/{self.total} {self.unit}, {rate:.4g} {self.unit}/s, ETA {eta}"
        return f"{text}, {self._postfix}" if self._postfix else text

    def close(self, summary: str | None = None) -> None:
        """End the stage; ``summary`` replaces the note beside the bar and ends the closing line."""
        if not self.enabled:
            return
        if summary is not None:
            self._postfix = summary
        if self._bar is not None:
            if summary is not None:
                self._bar.set_postfix_str(summary, refresh=False)
            self._bar.close()
            self._bar = None
        if self.leave:
            log.info("%s", self.closing_line())
        self.enabled = False  # closed: later calls do nothing

    def closing_line(self) -> str:
        """The line that ends a stage, then its summary: "epoch 1/12: 25 steps in 2.3 s (69 steps/s after
        2.0 s compiling); loss 2.27". A resumed stage counts this process's units and names the others:
        "epoch 350/400: 7 of 25 steps in 0.3 s (18 done before); ..."."""
        elapsed = self._clock() - self._start
        rate = self.rate()
        done = f"{self.n - self.initial} of {self.n}" if self.initial else f"{self.n}"
        text = f"{self.desc}: {done} {self.unit} in {elapsed:.1f} s"
        if self.initial:
            text += f" ({self.initial} done before)"
        if rate is not None:
            warmup = f" after {self._warmup_s:.1f} s {self.warmup_name}" if self._warmup_s >= 0.05 else ""
            text += f" ({rate:.4g} {self.unit}/s{warmup})"
        return f"{text}; {self._postfix}" if self._postfix else text
