"""The training loop: train, validate every epoch, test the best model; resumable from the workdir.

:func:`train_and_evaluate` trains one head; :func:`train_members` trains a group of heads at once, each
equal to the single run of its own config. Both run :func:`train_group`, which reads top to bottom: set-up,
state, loop, test. Every piece of mutable state has an owner: the train state and the step count are the
loop's, the metrics queue and log window :class:`~smartvlm_jax.train.monitor.StepMetrics`', each member's
validation record :class:`~smartvlm_jax.train.monitor.History`', the saves and exports the
:class:`~smartvlm_jax.train.checkpointer.Checkpointer`'s.
"""

import contextlib
import logging
import math
import pathlib
import threading
import time
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
import optax

from smartvlm_jax import optim, reports, summaries
from smartvlm_jax.train import monitor
from smartvlm_jax.train import setup as setup_lib
from smartvlm_jax.train.ahead import Ahead
from smartvlm_jax.train.checkpointer import Checkpointer, export_best, host_params
from smartvlm_jax.train.evaluation import Evaluator
from smartvlm_jax.train.group import Group, Member, check_members
from smartvlm_jax.train.inputs import prepare_inputs
from smartvlm_jax.train.monitor import History, StepMetrics
from smartvlm_jax.train.setup import Run, setup
from smartvlm_jax.train.signals import Stopped, StopSignal
from smartvlm_jax.workdir import Workdir

log = logging.getLogger(__name__)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
    """Train, validate every epoch, test the best checkpoint; resumable from ``workdir``.

    Returns the results (also written to ``<workdir>/results.json``, with ``curves.png`` and the test
    plots beside it), or ``{"stopped_at_step": n}`` when a SIGTERM asked the run to save and stop. What XLA
    compiled or loaded from the compilation cache meanwhile is in ``results["xla"]``.
    """
    with summaries.CompileLog() as compiles:
        return train_group(config, Workdir(workdir), compiles)[0]


def train_members(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    members: Sequence[Member],
    *,
    plots: bool = True,
    label: str = "",
    stop: threading.Event | None = None,
    features_ready: threading.Event | None = None,
) -> dict[str, dict]:
    """Train the ``members`` at once (one jitted step, ``jax.vmap`` over their stacked train states) on the
    same batches: the data order of ``config`` (``data_seed``), each member's own seed (initialisation,
    dropout), learning rate, weight decay and dropout rate. Each member equals the single run of its
    resolved config (``<workdir>/<name>/config.json``): same losses, same test metrics.

    ``<workdir>`` holds the group (its ``config.json`` and the stacked checkpoints: a rerun resumes from
    them); ``<workdir>/<name>/`` is each member's complete run workdir (``best_model/``, ``results.json``,
    ``log.jsonl``, ``tensorboard/``, with ``plots`` its test plots and ``curves.png``). Early stopping is
    per member: a member whose patience runs out keeps its state while the others train on.

    For groups trained side by side in threads (``smartvlm_jax.sweep``): ``label`` names the group in its
    epoch progress ("no_qf: epoch 3/12"); ``stop``, when given, replaces the SIGTERM handler this function
    otherwise installs (which only the main thread may): once set, the group saves at its next step and
    stops; ``features_ready`` is set once the group's features are in the store (or it reads none).

    Returns member name -> its results (as :func:`train_and_evaluate`'s), or -> ``{"stopped_at_step": n}``
    when a SIGTERM (or ``stop``) stopped the group. ValueError names a bad member (name, lr, weight decay,
    pdrop) or a workdir whose checkpoints hold other members.
    """
    members = check_members(config, members)
    with summaries.CompileLog() as compiles:
        options = dict(plots=plots, label=label, stop=stop, features_ready=features_ready)
        results = train_group(config, Workdir(workdir), compiles, members, **options)
    return {m.name: r for m, r in zip(members, results, strict=True)}


def train_group(
    config: ml_collections.ConfigDict,
    workdir: Workdir,
    compiles: summaries.CompileLog,
    members: Sequence[Member] | None = None,
    *,
    plots: bool = True,
    label: str = "",
    stop: threading.Event | None = None,
    features_ready: threading.Event | None = None,
) -> list[dict]:
    """:func:`run_group` holding the workdir's lock (:func:`lock`), under a :class:`StopSignal` (``stop``:
    the caller's event instead of handlers):
    SIGTERM or a first Ctrl-C stops the run where it is safe, keeping what it finished (a checkpoint in
    the loop; the store's shards while extracting), and it returns ``{"stopped_at_step": n}`` per member
    (n: the latest checkpoint's step). The same command then resumes."""
    setup_lib.checked(config, workdir)  # before the workdir holds anything, even its lock file
    created = not workdir.root.exists()
    workdir.root.mkdir(parents=True, exist_ok=True)
    options = (plots, label, features_ready)
    try:
        with StopSignal(stop) as stop_signal, lock(workdir):
            try:
                return run_group(config, workdir, compiles, members, stop_signal, *options)
            except Stopped as e:
                log.info("%s%s: stopped; the same command resumes", f"{label}: " if label else "", e)
                step = latest_step(workdir)
                return [{"stopped_at_step": step} for _ in members or [None]]
    except Exception:
        if {p.name for p in workdir.root.iterdir()} <= {workdir.lock_file.name}:  # refused before writing
            workdir.lock_file.unlink(missing_ok=True)
            if created:
                workdir.root.rmdir()
        raise


def lock(workdir: Workdir) -> contextlib.AbstractContextManager:
    """One run per workdir: ``Workdir.lock`` on process 0 (WorkdirLockedError naming the holder's pid and
    host when another live run has it); the other processes of a job share process 0's."""
    return workdir.lock() if jax.process_index() == 0 else contextlib.nullcontext()


def latest_step(workdir: Workdir) -> int:
    """The step of the workdir's latest checkpoint (0: none)."""
    steps = [int(p.name) for p in workdir.checkpoints.glob("*") if p.name.isdigit()]
    return max(steps, default=0)


def optimiser(run: Run) -> tuple[optax.GradientTransformation, int]:
    """(The run's optimiser, the total steps its schedule spans: ``num_epochs`` x batches per epoch)."""
    config = run.config
    total_steps = config.num_epochs * math.ceil(len(run.splits["train"]) / config.batch_size)
    return optim.make_optimizer(config.optim, total_steps), total_steps


def run_group(
    config: ml_collections.ConfigDict,
    workdir: Workdir,
    compiles: summaries.CompileLog,
    members: Sequence[Member] | None,
    stop_signal: StopSignal,
    plots: bool,
    label: str,
    features_ready: threading.Event | None,
) -> list[dict]:
    """The loop of a single run (``members`` None: an unstacked state) or of a group (a state stacked on
    a leading member axis, a vmapped step); one result per member (one for a single run). Raises
    :class:`Stopped` where a stop request meets a safe point outside the train steps."""
    # --- Set-up: data, towers and head; the programs compiled in threads from the moment the head's shapes
    # are known (while the towers are built and the features extracted into the store), or once the
    # towers that run in the step are loaded.
    ahead: Ahead | None = None

    def compile_ahead(planned: Run) -> None:
        nonlocal ahead
        if config.cache_features:  # the member runs' settings without their workdirs (written below)
            planned_group = Group.create(planned, members, label, record=False)
            ahead = Ahead(planned_group, *optimiser(planned))

    run = setup(config, workdir, compiles, stop_signal, head_ready=compile_ahead)
    group = Group.create(run, members, label)
    tx, total_steps = optimiser(run)  # its state's structure is every member's
    steps_per_epoch = math.ceil(len(run.splits["train"]) / config.batch_size)
    max_steps = total_steps if config.max_steps < 0 else min(total_steps, config.max_steps)
    inputs = prepare_inputs(run, stop_signal)
    if features_ready is not None:
        features_ready.set()
    ahead = ahead or Ahead(group, tx, total_steps, inputs.towers, inputs.tower_params)

    # --- The data, the state (restored when the workdir holds a checkpoint), the steps.
    train_iter = iter(
        inputs.batches("train", shuffle=True, num_epochs=config.num_epochs, global_batch=config.batch_size)
    )
    initialiser = ahead.initialiser()
    state, abstract_state = initialiser.state(), initialiser.abstract_state
    group.log_parameters(abstract_state)
    checkpointer = Checkpointer(group, abstract_state, train_iter)
    state, meta = checkpointer.restore(state)
    history = History(group.records(meta), config.early_stop_patience)
    window = monitor.window_from_json(meta.get("train_window")) if meta else None
    step_metrics = StepMetrics(group, window, config.log_every_steps, max_steps, checkpointer.last_good)
    evaluator = Evaluator(group, inputs, ahead.predict)
    step, steps, epoch_bar = group.step_of(state), None, None

    # --- The loop: a step; its metrics read when due; at an epoch's end, validation; saves when due.
    with step_metrics:
        while step < max_steps and history.active().any():
            if epoch_bar is None:
                epoch_bar = monitor.epoch_progress(group, step, steps_per_epoch, max_steps)
                step_metrics.start_epoch()
            start = time.perf_counter()  # the training stage: batch, step and loss, compilation left out
            batch = run.to_global(next(train_iter))
            on = history.active()  # the members this step trains (the others' states stay as they were)
            compile_s = 0.0
            if steps is None:  # the step that waits for the compilation
                epoch_bar.status("compiling the train and eval steps")
                waited = ahead.waited
                steps = ahead.steps()
                compile_s = ahead.waited - waited
            state, metrics = steps.train(state, *steps.args(batch, inputs.tower_params, on))
            step += 1
            epoch_end = step % steps_per_epoch == 0
            save_due = step % config.checkpoint_every_steps == 0
            step_metrics.add(step, on, metrics, due=epoch_end or save_due or step == max_steps)
            run.timing.add("train", time.perf_counter() - start - compile_s, steps=1)
            # the step that compiled is left out of the rate and ETA
            epoch_bar.update(1, warmup=compile_s > 0, postfix=step_metrics.postfix)
            if epoch_end:
                epoch = step // steps_per_epoch
                end_epoch(epoch, step, state, on, epoch_bar, evaluator, history, step_metrics, checkpointer)
                epoch_bar = None
            if epoch_end or save_due:
                checkpointer.save_if_due(step, state, history, step_metrics)
            if stop_signal.requested():
                step_metrics.read()
                if epoch_bar is not None:  # (None: the signal came as an epoch ended)
                    summary = monitor.epoch_summary(step_metrics.losses)
                    epoch_bar.close(f"{summary}, stopped by {stop_signal.reason}")
                log.info("%s%s: saving step %d and stopping", group.prefix, stop_signal.reason, step)
                checkpointer.save_unless_saved(step, state, history, step_metrics)
                return [{"stopped_at_step": step} for _ in group.runs]
        if epoch_bar is not None:  # max_steps ended an epoch early
            epoch_bar.close(monitor.epoch_summary(step_metrics.losses))
        checkpointer.save_unless_saved(step, state, history, step_metrics)

    # --- The test: each member's best model (the last state where no epoch ended), curves and results.
    for i, r in enumerate(group.runs):
        if not r.workdir.best_model.exists():  # max_steps ended it before an epoch did
            with run.timing("checkpoint"):
                export_best(r, group.member(state.params, i))
        if run.is_lead and plots:
            with run.timing("plots"):
                series = summaries.read_log(r.workdir.log)
                best_epoch = int(history.records[i]["best_epoch"])
                reports.plot_curves(series, steps_per_epoch, best_epoch, r.workdir.curves)
    return evaluator.test_best_models(history.records, group.member_steps(state), plots, stop_signal)


def end_epoch(
    epoch: int,
    step: int,
    state,
    trained: np.ndarray,
    epoch_bar,
    evaluator: Evaluator,
    history: History,
    step_metrics: StepMetrics,
    checkpointer: Checkpointer,
) -> None:
    """Validate the members this epoch ``trained`` (bool [N]), record their results, queue each new best
    for export with the next save, and close the epoch's progress bar with its summary."""
    group = evaluator.group
    epoch_bar.status(f"loss {np.mean(step_metrics.losses):.4g}, validating")
    with group.run.timing("eval"):
        vals = evaluator.evaluate(state.params, "val", baselines=False)
    new_best = []
    params_on_host = None  # one transfer of the (stacked) parameters for this epoch's bests
    for i in np.flatnonzero(trained):  # a stopped member's val is the one it stopped with
        step_metrics.write_val(i, step, vals[i])
        if history.add(i, epoch, vals[i]):
            new_best.append(i)
            with group.run.timing("checkpoint"):
                if params_on_host is None:
                    params_on_host = host_params(state.params)
                # copies: the host arrays may share the buffers the next step is donated
                checkpointer.queue_export(i, jax.tree.map(np.array, group.member(params_on_host, i)))
    if group.stacked:
        now = history.active()
        stopped = [m.name for i, m in enumerate(group.members) if trained[i] and not now[i]]
        summary = monitor.members_summary(step_metrics.losses, group, history, trained, new_best, stopped)
    else:
        summary = monitor.epoch_summary(step_metrics.losses, vals[0], bool(new_best))
    epoch_bar.close(summary)
