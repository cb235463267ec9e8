"""What a run shows and decides as it trains: the step metrics (read from the devices in batches, logged
in fixed windows, checked for NaN), each member's validation history (best epoch, early stopping), and
the console lines that close each epoch.
"""

import math
import time
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np

from smartvlm_jax import console, reports, summaries
from smartvlm_jax.train.group import Group
from smartvlm_jax.train.state import TrainMetrics

# The train metrics of logged steps are read at most this often (seconds; epoch ends and saves always
# read): what the console, log.jsonl and TensorBoard show lags the dispatched steps by about this much.
# Each read waits for the dispatched steps, so reading every few short steps would leave the cores idle.
METRICS_READ_SECS = 1.0


def window_to_json(window: TrainMetrics | None) -> list | None:
    """The train metrics accumulated since the last logged step, as JSON numbers (for the checkpoint):
    one number per leaf, or a list of N per leaf for a group's stacked metrics."""
    if window is None:
        return None
    return [np.asarray(x).tolist() for x in jax.tree.leaves(jax.device_get(window))]


def window_from_json(values: list[float] | None) -> TrainMetrics | None:
    """Inverse of :func:`window_to_json` (each leaf back to its dtype, and its shape: () or [N])."""
    if values is None:
        return None
    template = TrainMetrics.single_from_model_output(loss=0.0, grad_norm=0.0, learning_rate=0.0)
    leaves, treedef = jax.tree.flatten(template)
    if len(values) != len(leaves):
        raise ValueError(f"checkpointed train-metrics window: {len(values)} values, expected {len(leaves)}")
    typed = [np.asarray(v, np.asarray(t).dtype) for v, t in zip(values, leaves, strict=True)]
    return jax.tree.unflatten(treedef, typed)


class StepMetrics:
    """The train steps' metrics: queued as the steps are dispatched, read in one transfer when due,
    merged on the host into the current log window (``log_every_steps`` steps: a resumed run logs what
    the uninterrupted one does, the window's part before the resume coming from the checkpoint), written
    per member to ``log.jsonl`` and TensorBoard, and checked for a non-finite loss. Also keeps the epoch's
    step losses (the members' mean) for the progress bar and the epoch's closing line."""

    def __init__(
        self,
        group: Group,
        window: TrainMetrics | None,
        log_every_steps: int,
        max_steps: int,
        last_good: Callable[[], str],
    ):
        self.group = group
        self.window = window
        self.losses: list[float] = []
        self._log_every = log_every_steps
        self._max_steps = max_steps
        self._last_good = last_good
        self._unread: list[tuple[int, np.ndarray, TrainMetrics]] = []  # (step, members on, metrics)
        self._last_read = time.perf_counter()
        self.writers = [summaries.RunWriter(r.workdir, enabled=group.run.is_lead) for r in group.runs]

    def __enter__(self) -> "StepMetrics":
        return self

    def __exit__(self, *exc) -> None:
        for writer in self.writers:
            writer.close()

    def start_epoch(self) -> None:
        """Forget the step losses of the epoch before."""
        self.losses = []

    def add(self, step: int, trained: np.ndarray, metrics: TrainMetrics, *, due: bool) -> None:
        """Queue a dispatched step's metrics (``trained``: bool [N], the members it trained); read the
        queue when ``due`` (validation or a save comes next), or at a logged step once the last read is
        :data:`METRICS_READ_SECS` old."""
        self._unread.append((step, trained, metrics))
        logs = step % self._log_every == 0
        if due or (logs and time.perf_counter() - self._last_read >= METRICS_READ_SECS):
            self.read()

    def read(self) -> None:
        """Fetch the queued metrics in one transfer, add them to the log window, write each logged step's
        window (the steps between reads are logged at their own step, as if read at once) and add the
        losses to the epoch's. FloatingPointError at the first non-finite loss of a training member."""
        fetched_all = jax.device_get([u[2] for u in self._unread])
        for (at, trained, _), fetched in zip(self._unread, fetched_all, strict=True):
            self.window = fetched if self.window is None else self.window.merge(fetched)
            member_losses = np.atleast_1d(np.asarray(fetched.loss.compute()))
            for i in np.flatnonzero(trained):
                if not math.isfinite(member_losses[i]):
                    raise FloatingPointError(
                        f"loss is {member_losses[i]} at step {at}{self.group.where(i)}; "
                        f"last good checkpoint: {self._last_good()}"
                    )
            self.losses.append(float(member_losses[trained].mean()))
            if at % self._log_every == 0 or at == self._max_steps:
                for i in np.flatnonzero(trained):  # each member's own window (clu computes unstacked ones)
                    scalars = self.group.member(self.window, i).compute()
                    self.writers[i].write_scalars(at, scalars, prefix="train/")
                if at % self._log_every == 0:  # a last, partial log keeps its window for a resume
                    self.window = None
        self._unread.clear()
        self._last_read = time.perf_counter()

    @property
    def postfix(self) -> str | None:
        """The progress bar's "loss 1.68" (the epoch's mean so far), once every dispatched step is read."""
        return f"loss {np.mean(self.losses):.4g}" if self.losses and not self._unread else None

    def write_val(self, i: int, step: int, val: Mapping) -> None:
        """Member ``i``'s validation S_acc, O_acc and err at ``step``."""
        self.writers[i].write_scalars(step, {k: val[k] for k in ("S_acc", "O_acc", "err")}, prefix="val/")


class History:
    """Each member's validation record (the checkpoint meta keeps it): its epoch, every val result, its
    best val S_acc and epoch, and the epochs since it last improved, which stop it once they exceed
    ``patience`` (early stopping, per member: the others train on)."""

    def __init__(self, records: Sequence[dict], patience: int):
        self.records = list(records)
        self.epoch = max(int(r["epoch"]) for r in self.records)
        self._patience = patience

    def active(self) -> np.ndarray:
        """Which members still train: their patience has not run out. bool [N]."""
        return np.asarray([r["epochs_without_improvement"] <= self._patience for r in self.records])

    def add(self, i: int, epoch: int, val: Mapping) -> bool:
        """Record member ``i``'s ``val`` result at ``epoch``; whether it is the member's new best."""
        record = self.records[i]
        record["epoch"] = epoch
        self.epoch = max(self.epoch, epoch)
        record["val"].append(reports.to_json_safe(val))
        if val["S_acc"] > record["best_val_S_acc"]:
            record.update(best_val_S_acc=val["S_acc"], best_epoch=epoch, epochs_without_improvement=0)
            return True
        record["epochs_without_improvement"] += 1
        return False


def epoch_progress(group: Group, step: int, steps_per_epoch: int, max_steps: int) -> console.Progress:
    """The progress of the epoch that ``step`` (steps done) is in: "epoch 3/12" (after the group's
    label), its steps (fewer where ``max_steps`` ends it), the steps done already when a run resumes
    inside it."""
    epoch = step // steps_per_epoch + 1
    first = (epoch - 1) * steps_per_epoch
    total = min(steps_per_epoch, max_steps - first)
    desc = f"{group.prefix}epoch {epoch}/{group.run.config.num_epochs}"
    return console.Progress(
        desc, total, "steps", initial=step - first, warmup_name="compiling", enabled=group.run.is_lead
    )


def epoch_summary(losses: list[float], val: Mapping | None = None, new_best: bool = False) -> str:
    """What an epoch's bar ends with: "loss 1.679, val S_acc 14.4 %, O_acc 21.6 %, new best"."""
    text = f"loss {np.mean(losses):.4g}" if losses else "no step"
    if val is not None:
        text += f", val S_acc {100 * val['S_acc']:.1f} %, O_acc {100 * val['O_acc']:.1f} %"
    return text + (", new best" if new_best else "")


def members_summary(
    losses: list[float],
    group: Group,
    history: History,
    trained: np.ndarray,
    new_best: Sequence[int],
    stopped: Sequence[str],
) -> str:
    """What a group's epoch bar ends with: "loss 1.679 (mean of 3 members), best val S_acc 14.4 % (seed1),
    new best: seed0, seed1; patience out: lr1e-3" (``trained``: bool [N], the members this epoch trained;
    ``new_best``: their indices; ``stopped``: the names whose patience ran out at this epoch)."""
    members, records = group.members, history.records
    text = f"loss {np.mean(losses):.4g} (mean of {int(trained.sum())} members)" if losses else "no step"
    best = max(range(len(members)), key=lambda i: records[i]["best_val_S_acc"])
    text += f", best val S_acc {100 * records[best]['best_val_S_acc']:.1f} % ({members[best].name})"
    if new_best:
        text += ", new best: " + ", ".join(members[i].name for i in new_best)
    if stopped:
        text += "; patience out: " + ", ".join(stopped)
    return text
