"""A run's checkpoints, in one place: the Orbax manager, what a checkpoint holds (the state's layout and
the meta), the restore and its checks, when a routine save is due, and the best-model exports, which wait
for the next save so that a checkpoint and ``best_model/`` always agree.
"""

import functools
import logging
import time
from collections.abc import Mapping
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from smartvlm_jax import fileio, optim, parallel, reasoner, sources
from smartvlm_jax.reasoner import presence
from smartvlm_jax.train.group import Group
from smartvlm_jax.train.monitor import History, StepMetrics, window_to_json
from smartvlm_jax.train.setup import Run
from smartvlm_jax.train.state import TrainState, shardings

log = logging.getLogger(__name__)


def checkpoint_rows(model_cfg: ml_collections.ConfigDict, opt_state) -> tuple[int, ...] | None:
    """The ``im_encoder`` rows a train checkpoint holds (sorted puzzle ids), or None for all 102.

    With the row-sparse optimiser the rows of puzzles outside the run keep their initial values for ever,
    so checkpoints hold the run's rows only (``presence.encoder_rows``) and a restore writes them into the
    freshly initialised state, which holds the others. Model dirs (``best_model/``) always hold all 102,
    the reference's layout."""
    return presence.encoder_rows(model_cfg) if optim.skips_absent_rows(opt_state) else None


def host_params(params) -> Any:
    """A host copy of replicated parameters (each process holds all of them); numpy leaves as they are."""
    local = lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x
    return jax.tree.map(lambda x: np.asarray(local(x)), params)


def export_best(run: Run, params) -> None:
    """Replace ``<workdir>/best_model`` (a reasoner model dir) with ``params``, never half-written; its
    ``sources.json`` records the towers' digests, which loading it with other towers is checked against."""
    best = run.workdir.best_model
    if run.is_lead:  # every process holds all the (replicated) parameters: one file, one writer
        with fileio.staged_dir(best, replace=True) as staging:
            reasoner.save(staging, run.model_cfg, host_params(params))
            sources.write(staging, sources.towers_only(run.sources))
    multihost_utils.sync_global_devices("best model: written")  # no process reads it before


def state_type_handlers() -> ocp.type_handlers.TypeHandlerRegistry:
    """Orbax's standard handlers for the train state's leaves, with replica-parallel saving off: it splits
    each replicated array into a slice per device, a program compiled per device and shape (168 for a
    group of 3 heads on 8 CPU devices), to spread the write of large arrays. The head's state is a few
    megabytes, written whole by the first replica, as Orbax does by default on GPUs."""
    th = ocp.type_handlers
    return th.create_type_handler_registry(
        (int, th.ScalarHandler()),
        (float, th.ScalarHandler()),
        (np.number, th.ScalarHandler()),
        (np.ndarray, th.NumpyHandler()),
        (jax.Array, th.ArrayHandler(use_replica_parallel=False)),
        (str, th.StringHandler()),
    )


def manager_options(keep: int | None) -> ocp.CheckpointManagerOptions:
    """The Orbax manager's options: ``keep`` checkpoints (None: all), and a save's leftovers removed.

    A save is written to ``<step>.orbax-checkpoint-tmp-<time>/`` and renamed into place when complete; a
    process killed meanwhile (a second Ctrl-C, SIGKILL) leaves that folder behind. Orbax never reads one
    back (its steps are the renamed folders), but keeps it unless asked: ``cleanup_tmp_directories``
    removes them when the manager is made, which is safe because one run holds the workdir
    (``Workdir.lock``), so no other save is in progress there.
    """
    return ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        cleanup_tmp_directories=True,
        # Process 0 makes a save's directories; with several processes they must exist before the
        # others write their parts (grain's per-process iterator files), so not in the background.
        async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
    )


class Checkpointer:
    """Saves and restores a group's train state, its data iterator and its meta (each member's
    validation record, the train-metrics window, the encoder rows the state holds).

    Routine saves (an epoch's end, every ``checkpoint_every_steps``) come at least
    ``checkpoint_min_interval_secs`` apart: a resume from an older checkpoint redoes the same steps to the
    same state (and the same best-model exports), so a skipped save loses only time, while each Orbax
    save has a fixed cost that short epochs would pay every fraction of a second. The last step and a
    SIGTERM always save.
    """

    def __init__(self, group: Group, abstract_state: TrainState, train_iter):
        run = group.run
        self.group = group
        self.directory = run.workdir.checkpoints
        self._config = run.config
        self._train_iter = train_iter
        self._abstract = abstract_state
        self._rows = checkpoint_rows(run.model_cfg, abstract_state.opt_state)
        self._layout = None if self._rows is None else list(self._rows)  # as the meta records them
        self._to_saved = (
            (lambda x: x)
            if self._rows is None
            else jax.jit(group.per_member(functools.partial(presence.take_encoder_rows, rows=self._rows)))
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=manager_options(run.config.keep_checkpoints),
            item_handlers={
                "state": ocp.PyTreeCheckpointHandler(type_handler_registry=state_type_handlers()),
                "data": grain.checkpoint.CheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )
        self.last_saved_step: int | None = None
        self._last_save_time = time.perf_counter()
        # Member index -> its new best parameters (host copies), exported with the next save: a
        # checkpoint's meta names each member's best epoch, and its best_model/ then holds that epoch's
        # parameters. (A run resumed from an older checkpoint redoes the same epochs and exports.)
        self._unexported: dict[int, Any] = {}

    def last_good(self) -> str:
        """The latest checkpoint's directory, for error messages."""
        latest = self.manager.latest_step()
        return str(self.directory / str(latest)) if latest is not None else "none (no checkpoint saved yet)"

    def restore(self, fresh: TrainState) -> tuple[TrainState, Mapping | None]:
        """(state, meta) of the latest checkpoint, the data iterator restored in place; ``(fresh, None)``
        when there is none. ValueError when the checkpoint holds other members or other encoder rows."""
        step = self.manager.latest_step()
        if step is None:
            self.last_saved_step = 0
            return fresh, None
        saved_meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        self.group.records(saved_meta)  # refuses other members before the state is read
        saved_rows = saved_meta.get("encoder_rows")  # absent in checkpoints of every row (older ones too)
        if saved_rows is not None and saved_rows != self._layout:
            raise ValueError(
                f"{self.directory} holds the image-encoder rows {saved_rows} of the row-sparse optimiser, "
                f"but this run trains {self._layout or 'every row'} (--config.optim.skip_absent_rows="
                f"{self._config.optim.get('skip_absent_rows')}): use a new workdir"
            )
        state_shardings = shardings(self._abstract)
        saved_shapes = (
            self._abstract if saved_rows is None else jax.eval_shape(self._to_saved, self._abstract)
        )
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), saved_shapes, state_shardings
        )
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(abstract, ocp.checkpoint_utils.construct_restore_args(abstract)),
                data=grain.checkpoint.CheckpointRestore(self._train_iter),
                meta=ocp.args.JsonRestore(),
            ),
        )
        state = restored.state
        if saved_rows is not None:  # the run's rows into the initial state, which has every other row
            put = self.group.per_member(functools.partial(presence.put_encoder_rows, rows=self._rows))
            state = jax.jit(put, out_shardings=state_shardings, donate_argnums=0)(fresh, restored.state)
        log.info("resumed from %s at step %d", self.directory, step)
        self.last_saved_step = step
        return state, restored.meta

    def queue_export(self, i: int, params) -> None:
        """Member ``i``'s new best parameters (a host copy), exported to its ``best_model/`` with the next
        save."""
        self._unexported[i] = params

    def save(self, step: int, state: TrainState, history: History, metrics: StepMetrics) -> None:
        """Export the queued best models, then save the state, the data iterator and the meta at ``step``."""
        self.last_saved_step, self._last_save_time = step, time.perf_counter()
        timing = self.group.run.timing
        with timing("checkpoint") as counts:
            counts["saves"] = 1
            for i, params in self._unexported.items():
                export_best(self.group.runs[i], params)
            self._unexported.clear()
            meta = dict(self.group.meta(history.records, history.epoch))
            meta["encoder_rows"] = self._layout
            meta["train_window"] = window_to_json(metrics.window)
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeSave(self._to_saved(state)),
                    data=grain.checkpoint.CheckpointSave(self._train_iter),
                    meta=ocp.args.JsonSave(meta),
                ),
                force=True,
            )

    def save_if_due(self, step: int, state: TrainState, history: History, metrics: StepMetrics) -> None:
        """A routine save, skipped while the last save is younger than ``checkpoint_min_interval_secs``."""
        young = time.perf_counter() - self._last_save_time < self._config.checkpoint_min_interval_secs
        if parallel.any_process(not young):  # every process saves, or none (a save has barriers)
            self.save(step, state, history, metrics)

    def save_unless_saved(self, step: int, state: TrainState, history: History, metrics: StepMetrics) -> None:
        """Save ``step`` unless the last save was of it; then wait for the save to finish."""
        if self.last_saved_step != step:
            self.save(step, state, history, metrics)
        with self.group.run.timing("checkpoint"):
            self.manager.wait_until_finished()
