"""The layout of a training workdir: every path a run writes or reads, named once.

    wd = Workdir("workdirs/smoke")
    wd.config_file, wd.best_model, wd.results, wd.feature_record, wd.plot("test", "per_puzzle")

``<root>/``
    ``config.json``            the resolved run config (towers and data settings included)
    ``sources.json``           the digests of the data root and towers the run read (``smartvlm_jax.sources``)
    ``best_model/``            the best epoch's head: a reasoner model dir (config.json, params.safetensors,
                               sources.json: its towers' digests)
    ``checkpoints/``           Orbax checkpoints of the training state, for resuming
    ``features.json``          the feature-store entries and columns the run read (cached features)
    ``features/``              the feature store, when the run keeps it here (``--config.feature_store=''``)
    ``results.json``           metrics per split (and timing), written atomically
    ``<split>_per_<group>.png`` per-puzzle and per-skill accuracy plots
    ``evaluations/<split>/``   ``evaluate``'s own results.json and plots (the run's record stays as trained)
    ``curves.png``             train loss by step, val S_acc/O_acc by epoch, the best epoch marked
    ``report.html``            the run's page: results, curves, tables, a gallery of test answers
                               (``smartvlm_jax.report``; docs/report.md)
    ``<split>_predictions.npz`` each instance's answer and top-k probabilities, which the page shows
    ``log.jsonl``, ``tensorboard/``  the logged scalars
    ``run.log``                every log line of the run, libraries' included (``run.<k>.log``: process k)
    ``synthetic/``, ``tfds/``, ``towers/``  generated puzzles, the built dataset and tiny towers, when asked
    ``<member>/``              a group's member (``train.train_members``): a complete run workdir of its own
                               (config, best_model, results, logs); the group's checkpoints stay at the root

    ``.lock``                  who runs here now (:meth:`Workdir.lock`): pid and host

Path arithmetic (plus reading the run config): nothing here creates files but :meth:`Workdir.lock`.
:func:`user_cache_dir` names the per-user cache that runs share (the XLA compilation cache, the feature
store).

A workdir's path may hold spaces and any Unicode, but none of ``[ ] * ?``: Orbax, which writes the
checkpoints (and the tiny towers), finds its files again with a glob pattern built from the path, so
``runs/exp[1]`` wrote checkpoints it could not read back, and ``a*b`` would match a neighbour ``axyb``.
:class:`Workdir` refuses such a path when it is made, before any work (ValueError, one line).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import pathlib
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

CONFIG_FILE = "config.json"  # a run's resolved config, and a model dir's head config alike
SOURCES_FILE = "sources.json"  # the digests of what a run (or a model dir's head) was trained on
BEST_MODEL_DIR = "best_model"
LOCK_FILE = ".lock"
GLOB_CHARACTERS = "[]*?"

log = logging.getLogger(__name__)


class WorkdirLockedError(OSError):
    """Another live process holds the workdir's lock; the message names its pid and host."""


def check_path(path: str | os.PathLike, what: str = "workdir") -> None:
    """ValueError (one line, naming ``what`` and the characters) if ``path`` holds a glob character."""
    found = sorted({c for c in os.fspath(path) if c in GLOB_CHARACTERS})
    if found:
        raise ValueError(
            f"{what} {os.fspath(path)!r} holds {' '.join(found)}: Orbax finds checkpoint files by a glob "
            "pattern over the path, so no path here may hold [ ] * or ?; choose another folder name"
        )


def check_writable(path: str | os.PathLike, what: str = "--workdir", hint: str = "") -> None:
    """One-line errors, before anything is created, for a workdir a run cannot write: a glob character
    (:func:`check_path`), a file (NotADirectoryError), or a folder (or its first existing parent) this
    user may not write (PermissionError); ``hint`` ends the latter's message."""
    if not os.fspath(path):
        raise ValueError(f"{what} is empty: name the folder of the run")
    check_path(path, what)
    existing = pathlib.Path(path).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{what} {os.fspath(path)!r}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {os.fspath(path)!r}: {existing} is not writable{hint}")


@dataclasses.dataclass(frozen=True)
class Workdir:
    """A training run's directory (absolute); see the module docstring for the layout."""

    root: pathlib.Path

    def __init__(self, root: str | os.PathLike) -> None:
        root = pathlib.Path(root).absolute()
        check_path(root)
        object.__setattr__(self, "root", root)

    def __fspath__(self) -> str:
        return str(self.root)

    @property
    def config_file(self) -> pathlib.Path:
        return self.root / CONFIG_FILE

    @property
    def sources(self) -> pathlib.Path:
        """``sources.json``: the digests of the run's data root and towers (``smartvlm_jax.sources``)."""
        return self.root / SOURCES_FILE

    @property
    def best_model(self) -> pathlib.Path:
        return self.root / BEST_MODEL_DIR

    @property
    def checkpoints(self) -> pathlib.Path:
        return self.root / "checkpoints"

    @property
    def feature_store(self) -> pathlib.Path:
        """``features/``: the run's own feature store (``--config.feature_store=''``, or a multi-process
        job left with the per-user default)."""
        return self.root / "features"

    @property
    def feature_record(self) -> pathlib.Path:
        """``features.json``: which store entries and columns the run read (``features.write_record``)."""
        return self.root / "features.json"

    @property
    def results(self) -> pathlib.Path:
        return self.root / "results.json"

    def plot(self, split: str, group: str) -> pathlib.Path:
        """``<split>_per_<group>.png``; ``group``: "puzzle" or "skill"."""
        return self.root / f"{split}_per_{group}.png"

    @property
    def curves(self) -> pathlib.Path:
        """``curves.png``: the training curves (``reports.plot_curves``)."""
        return self.root / "curves.png"

    @property
    def evaluations(self) -> pathlib.Path:
        """``evaluations/``: what ``evaluate`` writes, one folder per split; the run's own record (config,
        results, features.json, plots) is never rewritten by a re-evaluation."""
        return self.root / "evaluations"

    @property
    def report(self) -> pathlib.Path:
        """``report.html``: the page of the run or sweep (``smartvlm_jax.report``)."""
        return self.root / "report.html"

    def predictions(self, split: str) -> pathlib.Path:
        """``<split>_predictions.npz``: per-instance answers and top-k probabilities (the report's)."""
        return self.root / f"{split}_predictions.npz"

    @property
    def log(self) -> pathlib.Path:
        return self.root / "log.jsonl"

    def run_log(self, process_index: int = 0) -> pathlib.Path:
        """The run's text log: ``run.log`` of process 0, ``run.<k>.log`` of process k (each has its own)."""
        return self.root / ("run.log" if process_index == 0 else f"run.{process_index}.log")

    @property
    def tensorboard(self) -> pathlib.Path:
        return self.root / "tensorboard"

    @property
    def synthetic(self) -> pathlib.Path:
        return self.root / "synthetic"

    @property
    def tfds(self) -> pathlib.Path:
        return self.root / "tfds"

    @property
    def towers(self) -> pathlib.Path:
        return self.root / "towers"

    @classmethod
    def entry_names(cls) -> tuple[str, ...]:
        """The names of the entries this layout gives a fixed name (``best_model``, ``checkpoints``,
        ``config.json``, ...), sorted: a group's member subdirectory may take none of them."""
        probe = cls("/")
        paths = (getattr(probe, name) for name, v in vars(cls).items() if isinstance(v, property))
        return tuple(sorted(p.name for p in paths))

    def member(self, name: str) -> Workdir:
        """``<root>/<name>``: the workdir of a member of the group trained here (``train.train_members``)."""
        return Workdir(self.root / name)

    @property
    def lock_file(self) -> pathlib.Path:
        """``.lock``: the pid and host of the process running here (:meth:`lock`)."""
        return self.root / LOCK_FILE

    @contextlib.contextmanager
    def lock(self) -> Iterator[dict[str, Any]]:
        """Hold this workdir for one run: an exclusive ``fcntl.flock`` on ``.lock``, which then records
        {"pid", "host", "since"} (yielded). Creates the workdir.

        A second holder, in this process or another, raises :class:`WorkdirLockedError` at once, one line
        naming the holder's pid and host. The kernel drops a process's lock when it dies however it died
        (SIGKILL included), so a lock file left by a dead process is simply taken over. The lock is
        released on exit; the file stays (removing it would race with the next holder). Local
        filesystems and NFSv4 honour flock across hosts; a multi-process job takes it on process 0.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(self.lock_file)
                raise WorkdirLockedError(
                    f"{self.root} is in use by {holder}; wait for that run to end, or choose another workdir"
                ) from None
            me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
            # (a record once held: run.log, which waits for this process to hold the lock, opens now)
            log.debug("holding %s: pid %d on host %s", self.root, me["pid"], me["host"])
            try:
                yield me
            finally:
                os.ftruncate(fd, 0)  # no holder named once released
        finally:
            os.close(fd)  # (releases the flock)

    def holder(self) -> str | None:
        """ "another run: pid 123 on host h since ..." while a process holds :meth:`lock`, else None. A
        probe: a shared ``flock`` taken and dropped at once, never waited for."""
        try:
            fd = os.open(self.lock_file, os.O_RDONLY)
        except OSError:  # no lock file: never held
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _holder(self.lock_file)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def held_here(self) -> bool:
        """Whether this process holds the lock (:meth:`lock`): ``.lock`` names this pid and host, which
        it does only while held (the holder writes it once it has the lock and empties it on release)."""
        try:
            held = json.loads(self.lock_file.read_text() or "{}")
        except (OSError, ValueError):
            return False
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        return isinstance(held, dict) and {k: held.get(k) for k in me} == me

    def run_config(self) -> dict[str, Any] | None:
        """The resolved run config (a dict), or None when this is not a training workdir.

        A model dir's own ``config.json`` is a head config; a run's has "model" and "towers" sections and
        sits beside ``best_model/``.
        """
        if not (self.best_model.is_dir() and self.config_file.is_file()):
            return None
        run = self.read_config()
        return run if "towers" in run else None

    def read_config(self) -> dict[str, Any]:
        """``config.json`` as a dict, its :data:`PATH_FIELDS` inside the workdir (stored relative to it,
        so the workdir can move) made absolute again. ValueError naming the file when it is no JSON
        object."""
        try:
            run = json.loads(self.config_file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.config_file} is not valid JSON: {e}") from None
        if not isinstance(run, dict):
            raise ValueError(f"{self.config_file} holds no JSON object")
        return _map_paths(run, lambda p: p if os.path.isabs(p) else os.path.join(self.root, p))

    def portable(self, config: dict[str, Any]) -> dict[str, Any]:
        """A run config (dict) with its :data:`PATH_FIELDS` under this workdir made relative to it, as
        ``config.json`` stores them; paths elsewhere stay absolute."""

        def relative(path: str) -> str:
            absolute = pathlib.Path(path).absolute()
            inside = absolute.is_relative_to(self.root)
            return str(absolute.relative_to(self.root)) if inside else str(absolute)

        return _map_paths(config, relative)

    def with_moved_paths(
        self, saved: dict[str, Any], paths: Mapping[str, str], check: Iterable[str] | None = None
    ) -> dict[str, Any]:
        """The run config ``saved`` (as :meth:`read_config` gives it) with ``paths`` (field -> new place,
        given as ``--config.FIELD=PATH``) applied, for a run whose data or towers moved.

        ValueError naming the flag when a field of ``paths`` is no :data:`PATH_FIELDS`; FileNotFoundError
        naming the first path of ``check`` (default: every data and tower path it records) that is
        missing, and the flag that gives its new place (``--config.FIELD=PATH``)."""
        unknown = sorted(set(paths) - set(PATH_FIELDS))
        if unknown:
            raise ValueError(
                f"--config.{unknown[0]}: not a path of the run config (paths: {', '.join(PATH_FIELDS)})"
            )
        saved = json.loads(json.dumps(saved))
        for dotted in PATH_FIELDS:
            *parents, name = dotted.split(".")
            section = saved
            for parent in parents:
                section = section.setdefault(parent, {})
            if dotted in paths:
                section[name] = os.path.abspath(paths[dotted])
            value = section.get(name)
            needed = dotted.startswith(("data.", "towers.")) if check is None else dotted in check
            if needed and value and not os.path.exists(value):
                raise FileNotFoundError(
                    f"{self.config_file} records {dotted}={value!r}, which is missing: give its new place "
                    f"with --config.{dotted}=PATH"
                )
        return saved


# The run-config fields that hold paths: config.json stores those inside the workdir relative to it.
PATH_FIELDS = (
    "data.root",
    "data.data_dir",
    "towers.dinov2",
    "towers.siglip",
    "towers.resnet",
    "towers.bert",
    "feature_store",
    "compile_cache_dir",
)


def _map_paths(config: dict[str, Any], fn) -> dict[str, Any]:
    """A copy of ``config`` with ``fn`` applied to each non-empty :data:`PATH_FIELDS` string."""
    out = json.loads(json.dumps(config))
    for dotted in PATH_FIELDS:
        *parents, name = dotted.split(".")
        section = out
        for parent in parents:
            section = section.get(parent) if isinstance(section, dict) else None
        if isinstance(section, dict) and isinstance(section.get(name), str) and section[name]:
            section[name] = fn(section[name])
    return out


def _holder(lock_file: pathlib.Path) -> str:
    """ "pid 123 on host h (since 2026-01-01 10:00:00)" from a held lock file; what of it is readable."""
    try:
        held = json.loads(lock_file.read_text() or "{}")
    except (OSError, ValueError):
        held = {}
    if not isinstance(held, dict) or "pid" not in held:
        return "another run (its pid is not written yet)"
    since = held.get("since")
    when = f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if since else ""
    return f"another run: pid {held['pid']} on host {held.get('host', '?')}{when}"


def user_cache_dir(*parts: str) -> pathlib.Path:
    """The project's per-user cache, shared by runs: ``$SMARTVLM_JAX_CACHE``, else
    ``$XDG_CACHE_HOME/smartvlm_jax``, else ``~/.cache/smartvlm_jax``; ``parts`` name a folder under it.

    Absolute (``~`` expanded); nothing is created.
    """
    root = os.environ.get("SMARTVLM_JAX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "smartvlm_jax"
    )
    return pathlib.Path(root, *parts).expanduser().absolute()
