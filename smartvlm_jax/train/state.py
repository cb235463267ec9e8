"""The train state and the step's metrics: the pytrees the steps carry, and how a run's state is made.

The state is made as nanodo makes it: the initialiser is traced once for its shapes (``eval_shape``'s job),
those shapes give the shardings, and the same trace is compiled to produce the state on the mesh
(``train.ahead.compile_initialiser``, in the thread that compiles the run's programs ahead of time).
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from clu import metrics as clu_metrics

from smartvlm_jax import reasoner


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data iterator: a plain pytree for Orbax.

    A group's members (``train.train_members``) stack it on a leading member axis [N, ...]."""

    step: jax.Array  # int32 []: steps taken
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key data; dropout keys are folded from it with the step


# (No `from __future__ import annotations` here: clu reads these annotations as metric classes.)
@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
    """What one train step reports (float32 scalars, or [N] for a group's members)."""

    loss: clu_metrics.Average.from_output("loss")
    grad_norm: clu_metrics.Average.from_output("grad_norm")
    learning_rate: clu_metrics.LastValue.from_output("learning_rate")


def initial_state(model, model_cfg, tx: optax.GradientTransformation, key: jax.Array) -> TrainState:
    """A fresh train state: the head initialised from ``key`` on one example, step 0, the optimiser's
    state, and the key that seeds dropout (split from ``key``)."""
    init_key, state_key = jax.random.split(key)
    inputs = reasoner.checkpoint.example_inputs(model_cfg, batch=1)
    params = model.init({"params": init_key, "dropout": init_key}, *inputs)["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(state_key),
    )


def shardings(abstract_state: TrainState):
    """The shardings of an abstract (or concrete) state, leaf by leaf."""
    return jax.tree.map(lambda x: x.sharding, abstract_state)
