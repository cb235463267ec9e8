"""Training and evaluation of the reasoner head.

data (SMART-101 or synthetic) -> frozen-tower features (from the shared store, extracted once) -> head
-> loss -> AdamW -> new state -> Orbax. The workdir holds everything of a run, and a rerun with the same
workdir resumes from its latest checkpoint on the exact next batch.

One job per module, in the order a run meets them:

``checks``        the config, the tiny-tower flag and the workdir's head checked before any work
``setup``         data, tiny towers, mesh and head resolved into a :class:`Run` that nothing changes later
``inputs``        the steps' inputs: stored features (extracting what the store lacks) or towers in the step
``state``         the train state and the step metrics; the state created on the mesh
``steps``         the pure steps: train, member (for ``jax.vmap``), predict
``group``         a single run or a group of :class:`Member` s: every difference between the two
``signals``       SIGTERM and Ctrl-C: a stop at the next safe point, after a save
``checkpointer``  saves, restores and their checks, best-model exports
``monitor``       step metrics and NaN checks, each member's validation history and early stopping,
                  the epochs' console lines
``evaluation``    splits answered and scored, the best models tested, a workdir re-evaluated
``loop``          :func:`train_and_evaluate`, :func:`train_members`: the loop itself
"""

from smartvlm_jax.train.checkpointer import Checkpointer
from smartvlm_jax.train.checks import (
    changed_recipe,
    check_config,
    check_not_a_sweep,
    check_same_head,
    check_tiny_towers,
    upgrade_config,
)
from smartvlm_jax.train.evaluation import Evaluator, evaluate_workdir
from smartvlm_jax.train.group import RESERVED_NAMES, Group, Member, check_members, member_config
from smartvlm_jax.train.inputs import GatherCached, Inputs, cached_batches, prepare_inputs
from smartvlm_jax.train.loop import lock, train_and_evaluate, train_group, train_members
from smartvlm_jax.train.setup import (
    SPLITS,
    Run,
    data_seed,
    id_ranges,
    prepare_data,
    prepare_towers,
    setup,
    tower_dirs,
)
from smartvlm_jax.train.signals import Stopped, StopSignal
from smartvlm_jax.train.state import TrainMetrics, TrainState
from smartvlm_jax.train.steps import member_step, predict_step, train_step

__all__ = [
    "SPLITS",
    "RESERVED_NAMES",
    "Checkpointer",
    "Evaluator",
    "GatherCached",
    "Group",
    "Inputs",
    "Member",
    "Run",
    "StopSignal",
    "Stopped",
    "TrainMetrics",
    "TrainState",
    "cached_batches",
    "check_config",
    "check_members",
    "changed_recipe",
    "check_not_a_sweep",
    "check_same_head",
    "check_tiny_towers",
    "data_seed",
    "evaluate_workdir",
    "id_ranges",
    "lock",
    "member_config",
    "member_step",
    "predict_step",
    "prepare_data",
    "prepare_inputs",
    "prepare_towers",
    "setup",
    "tower_dirs",
    "train_and_evaluate",
    "train_group",
    "train_members",
    "train_step",
    "upgrade_config",
]
