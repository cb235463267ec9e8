"""The layout of a training workdir: every path a run writes or reads, named once.

    wd = Workdir("workdirs/smoke")
    wd.config_file, wd.best_model, wd.results, wd.feature_record, wd.plot("test", "per_puzzle")

``<root>/``
    ``config.json``            the resolved run config (towers and data settings included)
    ``best_model/``            the best epoch's head: a reasoner model dir (config.json, params.safetensors)
    ``checkpoints/``           Orbax checkpoints of the training state, for resuming
    ``features.json``          the feature-store entries and columns the run read (cached features)
    ``features/``              the feature store, when the run keeps it here (``--config.feature_store=''``)
    ``results.json``           metrics per split (and timing), written atomically
    ``<split>_per_<group>.png`` per-puzzle and per-skill accuracy plots
    ``curves.png``             train loss by step, val S_acc/O_acc by epoch, the best epoch marked
    ``report.html``            the run's page: results, curves, tables, a gallery of test answers
                               (``smartvlm_jax.report``; docs/report.md)
    ``<split>_predictions.npz`` each instance's answer and top-k probabilities, which the page shows
    ``log.jsonl``, ``tensorboard/``  the logged scalars
    ``run.log``                every log line of the run, libraries' included (``run.<k>.log``: process k)
    ``synthetic/``, ``tfds/``, ``towers/``  generated puzzles, the built dataset and tiny towers, when asked
    ``<member>/``              a group's member (``train.train_members``): a complete run workdir of its own
                               (config, best_model, results, logs); the group's checkpoints stay at the root

Pure path arithmetic (plus reading the run config): nothing here creates files. :func:`user_cache_dir` names
the per-user cache that runs share (the XLA compilation cache, the feature store).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

CONFIG_FILE = "config.json"  # a run's resolved config, and a model dir's head config alike
BEST_MODEL_DIR = "best_model"


@dataclasses.dataclass(frozen=True)
class Workdir:
    """A training run's directory (absolute); see the module docstring for the layout."""

    root: pathlib.Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", pathlib.Path(root).absolute())

    def __fspath__(self) -> str:
        return str(self.root)

    @property
    def config_file(self) -> pathlib.Path:
        return self.root / CONFIG_FILE

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

    def member(self, name: str) -> Workdir:
        """``<root>/<name>``: the workdir of a member of the group trained here (``train.train_members``)."""
        return Workdir(self.root / name)

    @staticmethod
    def staging(path: pathlib.Path) -> pathlib.Path:
        """The sibling a path is written to before it is renamed into place (``best_model.tmp``)."""
        return path.with_name(path.name + ".tmp")

    def run_config(self) -> dict[str, Any] | None:
        """The resolved run config (a dict), or None when this is not a training workdir.

        A model dir's own ``config.json`` is a head config; a run's has "model" and "towers" sections and
        sits beside ``best_model/``.
        """
        if not (self.best_model.is_dir() and self.config_file.is_file()):
            return None
        run = json.loads(self.config_file.read_text())
        return run if isinstance(run, dict) and "towers" in run else None


def user_cache_dir(*parts: str) -> pathlib.Path:
    """The project's per-user cache, shared by runs: ``$SMARTVLM_JAX_CACHE``, else
    ``$XDG_CACHE_HOME/smartvlm_jax``, else ``~/.cache/smartvlm_jax``; ``parts`` name a folder under it.

    Absolute (``~`` expanded); nothing is created.
    """
    root = os.environ.get("SMARTVLM_JAX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "smartvlm_jax"
    )
    return pathlib.Path(root, *parts).expanduser().absolute()
