"""What a loop trains: one head, or a group of members trained at once by one ``jax.vmap``-ed step.

A :class:`Member` is one head of a group: its name, seed, and optimiser and dropout settings. A
:class:`Group` confines every difference between a single run (one unstacked state, ``train_step``) and a
group (states stacked on a leading member axis, ``member_step`` under ``jax.vmap``): how the state is
initialised, the jitted steps and their arguments, a member's slice of a stacked tree, the checkpoint
meta's layout and the console lines. A single run stays unstacked rather than being a group of one: its
results stay bitwise those of earlier versions, and its step is the faster one (docs/training.md).
"""

import dataclasses
import functools
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from smartvlm_jax import optim, parallel, reasoner
from smartvlm_jax.train import setup as setup_lib
from smartvlm_jax.train.setup import Run
from smartvlm_jax.train.state import TrainState, initial_state
from smartvlm_jax.train.steps import member_step, predict_step, train_step
from smartvlm_jax.workdir import Workdir

log = logging.getLogger(__name__)

# Names a member may not take: the group workdir's own entries.
RESERVED_NAMES = Workdir.entry_names()


@dataclasses.dataclass(frozen=True)
class Member:
    """One head of a group (``train.train_members``): its name (the subdirectory of its workdir), its seed
    (initialisation and dropout), and the learning rate, weight decay and dropout rate it trains with
    (None: the config's ``optim.lr``, ``optim.weight_decay``, ``model.pdrop``)."""

    name: str
    seed: int
    lr: float | None = None
    weight_decay: float | None = None
    pdrop: float | None = None


def member_config(config: ml_collections.ConfigDict, member: Member) -> ml_collections.ConfigDict:
    """The single-run config that reproduces ``member``: ``seed``, ``optim.lr``, ``optim.weight_decay`` and
    ``model.pdrop`` set to the member's, and ``data_seed`` set to the group's data order explicitly (a
    member's seed varies initialisation and dropout, never the batches)."""
    out = ml_collections.ConfigDict(config.to_dict())
    out.data_seed = setup_lib.data_seed(config)
    out.seed = int(member.seed)
    if member.lr is not None:
        out.optim.lr = float(member.lr)
    if member.weight_decay is not None:
        out.optim.weight_decay = float(member.weight_decay)
    if member.pdrop is not None:
        out.model.pdrop = float(member.pdrop)
    return out


def check_members(config: ml_collections.ConfigDict, members: Sequence[Member]) -> list[Member]:
    """The members as a list, or ValueError naming the member and the field that cannot be right."""
    members = list(members)
    if not members:
        raise ValueError("train_members needs at least one Member")
    names = [m.name for m in members]
    for m in members:
        if not isinstance(m, Member):
            raise ValueError(f"members: {m!r} is not a train.Member")
        if not m.name or m.name in (".", "..") or "/" in m.name or m.name in RESERVED_NAMES:
            raise ValueError(f"Member name {m.name!r} is not a plain directory name outside {RESERVED_NAMES}")
        if names.count(m.name) > 1:
            raise ValueError(f"Member name {m.name!r} is given {names.count(m.name)} times")
        check_member_settings(config, m)
    return members


def check_member_settings(config: ml_collections.ConfigDict, m: Member) -> None:
    """ValueError naming the member when its lr, weight decay or dropout rate cannot be right."""
    if not -(2**31) <= int(m.seed) < 2**31:
        raise ValueError(f"Member {m.name!r}: seed={m.seed} must fit in 32 bits")
    if m.lr is not None and not float(m.lr) > 0:
        raise ValueError(f"Member {m.name!r}: lr={m.lr} must be > 0")
    if m.weight_decay is not None and config.optim.name != "adamw":
        raise ValueError(
            f"Member {m.name!r}: weight_decay={m.weight_decay}, but --config.optim.name="
            f"{config.optim.name!r} has no weight decay"
        )
    if m.pdrop is not None and config.model.head == "baseline" and m.pdrop != 0:
        raise ValueError(f"Member {m.name!r}: pdrop={m.pdrop}, but the baseline head has no dropout")
    if m.pdrop is not None and not 0.0 <= float(m.pdrop) < 1.0:
        raise ValueError(f"Member {m.name!r}: pdrop={m.pdrop} must lie in [0, 1)")


def member_runs(run: Run, members: Sequence[Member], record: bool = True) -> list[Run]:
    """Each member's :class:`Run`: the group's data, towers and timing, with the member's resolved config
    (the group's data root, dataset and tower directories written out: no synthetic or tiny flags),
    workdir (``<workdir>/<name>``, created, its ``config.json`` written; ``record`` False: neither, for the
    programs compiled before the group's set-up ends) and head config."""
    out = []
    for m in members:
        model_cfg = ml_collections.ConfigDict(run.model_cfg)
        model_cfg.pdrop = run.model_cfg.pdrop if m.pdrop is None else float(m.pdrop)
        config = member_config(run.config, m)
        # The group's data and towers, named explicitly: a single run of this config reads them where they
        # are instead of writing synthetic puzzles or tiny towers of its own (its check would refuse); copies.
        config.data = ml_collections.ConfigDict(run.data_cfg.to_dict())
        config.towers = ml_collections.ConfigDict(run.towers_cfg.to_dict())
        config.synthetic.enabled, config.towers.tiny = False, False
        member = dataclasses.replace(
            run,
            config=config,
            data_cfg=config.data,
            towers_cfg=config.towers,
            workdir=run.workdir.member(m.name),
            model_cfg=model_cfg,
            model=reasoner.build(model_cfg),
        )
        if record:
            member.workdir.root.mkdir(parents=True, exist_ok=True)
            setup_lib.write_run_config(member)
        out.append(member)
    return out


def member_hparams(runs: Sequence[Run]) -> dict[str, np.ndarray]:
    """The members' lr, weight decay and dropout rate, float32 [N] each (what ``member_step`` takes)."""
    return {
        "lr": np.asarray([r.config.optim.lr for r in runs], np.float32),
        "weight_decay": np.asarray([r.config.optim.weight_decay for r in runs], np.float32),
        "pdrop": np.asarray([r.model_cfg.pdrop for r in runs], np.float32),
    }


def fresh_record() -> dict:
    """A member's validation record before its first epoch (what the checkpoint meta keeps of it)."""
    return {"epoch": 0, "best_val_S_acc": -1.0, "best_epoch": 0, "epochs_without_improvement": 0, "val": []}


@dataclasses.dataclass(frozen=True)
class Group:
    """The heads one loop trains: ``members`` None for a single run (one unstacked state), else a group
    (states stacked on a leading member axis [N, ...]). ``runs`` holds each member's :class:`Run` (a single
    run's own); ``label`` names a group in console lines ("no_qf: epoch 3/12")."""

    run: Run
    runs: list[Run]
    members: list[Member] | None = None
    label: str = ""

    @classmethod
    def create(
        cls, run: Run, members: Sequence[Member] | None, label: str = "", record: bool = True
    ) -> "Group":
        """The group of ``run``'s ``members`` (None: the single run); ``record``: see :func:`member_runs`."""
        if members is None:
            return cls(run, [run], None, label)
        return cls(run, member_runs(run, members, record), list(members), label)

    @property
    def stacked(self) -> bool:
        return self.members is not None

    @property
    def prefix(self) -> str:
        """What console lines start with: "``label``: ", or nothing."""
        return f"{self.label}: " if self.label else ""

    def member(self, tree, i: int):
        """Member ``i``'s slice of a stacked tree; a single run's tree itself."""
        return jax.tree.map(lambda x: x[i], tree) if self.stacked else tree

    def stack(self, trees: Sequence):
        """Members' trees stacked on a new leading axis; a single run's one tree itself."""
        return jax.tree.map(lambda *xs: jnp.stack(xs), *trees) if self.stacked else trees[0]

    def per_member(self, fn):
        """``fn`` of one member's tree, applied to each member of a stacked tree."""
        return jax.vmap(fn) if self.stacked else fn

    def where(self, i: int) -> str:
        """ " (member 'seed1')" in a group's messages; nothing for a single run."""
        return f" (member {self.members[i].name!r})" if self.stacked else ""

    # --- the train state

    def initialiser(self, tx) -> tuple[Any, Any]:
        """(init function, its argument) of the train state: each member from its own seed, as its single
        run is initialised."""
        model, model_cfg = self.run.model, self.run.model_cfg

        # The key is made from the seed inside the program: made outside, it is a program of its own.
        # int32 seeds: what jax.random.key makes of a Python int (check_config keeps seeds in range).
        def initial_state_of_seed(seed):
            return initial_state(model, model_cfg, tx, jax.random.key(seed))

        if not self.stacked:
            return initial_state_of_seed, np.asarray(self.run.config.seed, np.int32)
        seeds = np.asarray([r.config.seed for r in self.runs], np.int32)
        return jax.vmap(initial_state_of_seed), seeds

    def log_parameters(self, abstract_state: TrainState) -> None:
        """Log one member's parameter count (and the shapes, at debug level)."""
        if not self.run.is_lead:
            return
        leading = int(self.stacked)  # a stacked leaf's member axis is not one member's
        shapes = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape[leading:], x.dtype), abstract_state.params
        )
        num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
        times = f" x {len(self.runs)} members" if self.stacked else ""
        log.info("%sreasoner head: %s parameters%s", self.prefix, f"{num_params:,}", times)
        log.debug("reasoner parameters:\n%s", reasoner.param_summary(shapes))

    def step_of(self, state: TrainState) -> int:
        """Steps taken: a group's members that still train are all at the largest count."""
        return int(jax.device_get(state.step).max())

    def member_steps(self, state: TrainState) -> list[int]:
        """Each member's steps (a stopped member's are its own)."""
        return [int(s) for s in np.atleast_1d(np.asarray(jax.device_get(state.step)))]

    @property
    def member_specs(self) -> list[dict]:
        """The members as the checkpoint meta records them (a stacked state restores by position)."""
        return [dataclasses.asdict(m) for m in self.members]

    # --- checkpoint meta: a single run's is its one record; a group's holds each member's under "members"

    def meta(self, records: Sequence[dict], epoch: int) -> dict:
        """The checkpoint meta of the members' validation ``records`` at ``epoch``."""
        if not self.stacked:
            return records[0]
        return {
            "epoch": epoch,
            "member_specs": self.member_specs,
            "members": {m.name: r for m, r in zip(self.members, records, strict=True)},
        }

    def records(self, meta: Mapping | None) -> list[dict]:
        """The members' validation records in a checkpoint ``meta`` (fresh ones for None); ValueError when
        it holds other members (a stacked state restores by position)."""
        if meta is None:
            return [fresh_record() for _ in self.runs]
        if not self.stacked:
            return [dict(meta)]
        specs = self.member_specs
        if meta.get("member_specs") != specs:
            raise ValueError(
                f"{self.run.workdir.checkpoints} holds the checkpoints of other members "
                f"({meta.get('member_specs')}), not {specs}: use a new workdir"
            )
        return [meta["members"][m.name] for m in self.members]

    # --- the jitted steps

    def steps(self, tx, total_steps: int, towers, state_shardings) -> "Steps":
        """The run's jitted train step (the state donated) and predict step."""
        run, config = self.run, self.run.config
        repl = parallel.replicated(run.mesh)
        data = parallel.batch_sharding(run.mesh)
        if self.stacked:
            step = functools.partial(
                member_step,
                model=run.model,
                model_cfg=run.model_cfg,
                optim_cfg=config.optim,
                total_steps=total_steps,
                towers=towers,
            )
            # the batch and the towers are the members' shared inputs; one pass answers for every member
            step = jax.vmap(step, in_axes=(0, None, None, 0, 0))
            in_shardings = (state_shardings, data, None, repl, repl)
        else:
            schedule = optim.learning_rate_schedule(config.optim, total_steps)
            step = functools.partial(
                train_step, model=run.model, model_cfg=run.model_cfg, tx=tx, schedule=schedule, towers=towers
            )
            in_shardings = (state_shardings, data, None)
        train = jax.jit(
            step, in_shardings=in_shardings, out_shardings=(state_shardings, repl), donate_argnums=(0,)
        )
        hparams = member_hparams(self.runs) if self.stacked else None
        return Steps(self, train, self.predict_fn(towers), hparams, towers is not None)

    def predict_fn(self, towers=None):
        """The jitted predict step: params -> [B, K]; a group's stacked params [N, ...] -> [N, B, K] (vmapped
        over the params only: one pass over the batch answers for every member)."""
        run = self.run
        predict = functools.partial(predict_step, model=run.model, model_cfg=run.model_cfg, towers=towers)
        return jax.jit(jax.vmap(predict, in_axes=(0, None, None)) if self.stacked else predict)

    # --- console lines

    def print_test_lines(self, results: Sequence[dict]) -> None:
        """A group's closing lines: each member's test S_acc and O_acc, best epoch and results file."""
        names = [
            f"{self.label}/{r.workdir.root.name}" if self.label else r.workdir.root.name for r in self.runs
        ]
        width = max(len(name) for name in names)
        for name, r, res in zip(names, self.runs, results, strict=True):
            val = (res["val"] or {}).get("S_acc", 0.0)
            print(
                f"{name:<{width}}  test S_acc {100 * res['test']['S_acc']:5.1f} %, "
                f"O_acc {100 * res['test']['O_acc']:5.1f} %  (best epoch {res['best_epoch']} of "
                f"{res['epochs']}, val S_acc {100 * val:.1f} %)  {r.workdir.results}"
            )


@dataclasses.dataclass(frozen=True)
class Steps:
    """A group's jitted steps: ``train(state, *args(batch, ...))`` and ``predict(params, batch,
    tower_params)`` ([B, K], or [N, B, K] for a group's stacked params)."""

    group: Group
    train: Any
    predict: Any
    hparams: dict[str, np.ndarray] | None  # a group's members' lr, weight decay and dropout rate
    with_towers: bool  # the towers run inside the step (features not cached)

    def args(self, batch, tower_params, active: np.ndarray) -> tuple:
        """The train step's arguments after the state: the batch and the towers' parameters (and a
        group's hyperparameters and which members train, bool [N])."""
        args = (batch, tower_params if self.with_towers else None)
        return (*args, self.hparams, np.asarray(active)) if self.group.stacked else args

    def compile(self, state, batch, tower_params, active: np.ndarray, eval_batch_size: int) -> float:
        """Compile the train and eval steps ahead of time (jax AOT); the jitted calls reuse the executables.
        Returns the seconds spent, which the training stage leaves out."""
        timing = self.group.run.timing
        start = time.perf_counter()
        with timing("compile/train_step"):
            self.train.lower(state, *self.args(batch, tower_params, active)).compile()
        eval_batch = {
            k: jax.ShapeDtypeStruct((eval_batch_size, *v.shape[1:]), v.dtype, sharding=v.sharding)
            for k, v in batch.items()
        }
        with timing("compile/eval_step"):
            self.predict.lower(state.params, eval_batch, tower_params).compile()
        return time.perf_counter() - start
