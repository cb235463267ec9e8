"""The pure steps: one train step of a head (or of a member, for ``jax.vmap``) and the predict step.

No I/O and no Python state: every function here is traced under ``jax.jit``. The frozen towers, when a
run computes features inside the step, are inputs that are never differentiated.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax

from smartvlm_jax import optim, reasoner
from smartvlm_jax.reasoner import presence
from smartvlm_jax.train.state import TrainMetrics, TrainState


def head_inputs(batch: Mapping[str, jax.Array], towers, tower_params) -> tuple[jax.Array, jax.Array]:
    """(vision, text) features: cached ones from the batch, or the frozen towers run on its images."""
    if "vision" in batch:
        return batch["vision"], batch["text"]
    vision, text = towers.features(tower_params, batch)
    return jax.lax.stop_gradient(vision), jax.lax.stop_gradient(text)


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    tower_params,
    *,
    model,
    model_cfg: ml_collections.ConfigDict,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    towers=None,
    pdrop: jax.Array | None = None,
    active: jax.Array | None = None,
) -> tuple[TrainState, TrainMetrics]:
    """One AdamW update of the head; the towers (if any) are frozen inputs, never differentiated.

    ``pdrop`` (float32 scalar, may be traced) replaces ``model_cfg.pdrop``, as a member's does. ``active``
    (bool scalar, traced; for the row-sparse optimiser, ``optim.skip_absent_rows``): False leaves every row
    of every parameter, its moments and its counts as they were, through the optimiser's row mask.
    """
    vision, text = head_inputs(batch, towers, tower_params)
    dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    rows = reasoner.row_presence(model_cfg, state.params, batch["puzzle_ids"], batch["mask"])
    if active is not None:
        rows = rows_if_active(state.params, rows, active)
    full_state, kept = state, None
    if optim.skips_absent_rows(state.opt_state):
        kept = presence.encoder_rows(model_cfg)
    if kept is not None:  # the other encoder rows cannot change: update the run's puzzles' rows only
        state, rows = presence.take_encoder_rows((state, rows), kept)
        model = model.clone(encoder_rows=kept)

    def loss_fn(params):
        logits = model.apply(
            {"params": params},
            vision,
            text,
            batch["puzzle_ids"],
            train=True,
            pdrop=pdrop,
            rngs={"dropout": dropout_rng},
        )
        return reasoner.loss(logits, batch["labels"], batch["puzzle_ids"], model_cfg, mask=batch["mask"])

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params, row_mask=rows)
    new_state = state.replace(
        step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state
    )
    if kept is not None:
        new_state = presence.put_encoder_rows(full_state, new_state, kept)
    metrics = TrainMetrics.single_from_model_output(
        loss=loss, grad_norm=optax.tree.norm(grads), learning_rate=schedule(state.step)
    )
    return new_state, metrics


def member_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    tower_params,
    hparams: Mapping[str, jax.Array],
    active: jax.Array,
    *,
    model,
    model_cfg: ml_collections.ConfigDict,
    optim_cfg: ml_collections.ConfigDict,
    total_steps: int,
    towers=None,
) -> tuple[TrainState, TrainMetrics]:
    """:func:`train_step` of one member, for ``jax.vmap`` over members: its optimiser and schedule built
    from its own ``hparams`` ("lr", "weight_decay", "pdrop": float32 scalars, traced), and its state left
    as it was where ``active`` (bool scalar) is False, so a member whose patience ran out stays frozen.

    With the row-sparse optimiser (``optim.skip_absent_rows``) a frozen member's rows are masked out of the
    update itself and only the scalar counters are selected; selecting whole states instead (the dense
    optimiser's way) keeps two copies of the state alive, which made the step much slower
    (docs/training.md)."""
    sparse = optim.skips_absent_rows(state.opt_state)
    new_state, step_metrics = train_step(
        state,
        batch,
        tower_params,
        model=model,
        model_cfg=model_cfg,
        tx=optim.make_optimizer(
            optim_cfg, total_steps, lr=hparams["lr"], weight_decay=hparams["weight_decay"]
        ),
        schedule=optim.learning_rate_schedule(optim_cfg, total_steps, hparams["lr"]),
        towers=towers,
        pdrop=hparams["pdrop"],
        active=active if sparse else None,
    )

    def keep(new, old):
        return jnp.where(active, new, old) if not sparse or jnp.ndim(new) == 0 else new

    return jax.tree.map(keep, new_state, state), step_metrics


def rows_if_active(params, rows, active: jax.Array):
    """``reasoner.row_presence``'s row masks with every row off where ``active`` is False: a tree like
    ``params`` of bool [leading rows] (shared leaves, None in ``rows``, get all their rows)."""
    treedef = jax.tree.structure(params)
    masks = treedef.flatten_up_to(rows)
    leaves = jax.tree.leaves(params)
    gated = [
        jnp.broadcast_to(active, jnp.shape(p)[:1]) if m is None else m & active
        for p, m in zip(leaves, masks, strict=True)
    ]
    return treedef.unflatten(gated)


def predict_step(params, batch, tower_params, *, model, model_cfg, towers=None) -> jax.Array:
    """Predicted answer values [B, K] (argmax per decode position)."""
    vision, text = head_inputs(batch, towers, tower_params)
    logits = model.apply({"params": params}, vision, text, batch["puzzle_ids"], train=False)
    return reasoner.predictions(logits, batch["puzzle_ids"], model_cfg)
