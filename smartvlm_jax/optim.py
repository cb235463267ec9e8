"""The optimiser of a run, built in one place from the config (big_vision's ``optax.py`` idea)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax


def learning_rate_schedule(
    optim: ml_collections.ConfigDict, total_steps: int, lr: jax.Array | float | None = None
) -> optax.Schedule:
    """Linear from 0 over ``warmup_steps``, then cosine to 0 at ``total_steps`` (SPEC section 7).

    The schedule is read at the update's step count, so the first update uses lr 0, as the reference's
    warm-up does. ``schedule="constant"`` (the SMART baseline) keeps ``lr`` throughout. ``lr`` (a float32
    scalar, may be traced: one per vmapped member) replaces ``optim.lr`` as the peak; None keeps it.
    ValueError names a bad ``--config.optim.schedule``.

    The warm-up cosine is a table of its values at steps 0..max(total_steps, warmup_steps + 1) (counts past
    the end read its last value, 0), computed once on the host in float64, as the reference's transformers
    schedule is in Python (optax.warmup_cosine_decay_schedule's formula), and read at the count in the
    step: XLA copied the formula's two dozen scalar operations into every parameter's update fusion, 2,000
    of the smoke train step's instructions (issue 30).
    """
    if lr is not None:
        # Both schedules start and end at 0 (or are constant), so they are linear in the peak.
        unit = learning_rate_schedule(ml_collections.ConfigDict({**optim.to_dict(), "lr": 1.0}), total_steps)
        return lambda count: lr * unit(count)
    if optim.schedule == "constant":
        return optax.constant_schedule(optim.lr)
    if optim.schedule != "warmup_cosine":
        raise ValueError(f"--config.optim.schedule={optim.schedule!r} is not 'warmup_cosine' or 'constant'")
    table = warmup_cosine_table(optim.lr, optim.warmup_steps, max(total_steps, optim.warmup_steps + 1))
    return lambda count: jnp.asarray(table)[jnp.clip(count, 0, len(table) - 1)]


def warmup_cosine_table(peak: float, warmup_steps: int, decay_steps: int) -> np.ndarray:
    """float32 [decay_steps + 1]: the learning rate at steps 0..decay_steps, linear from 0 to ``peak`` over
    ``warmup_steps``, then ``peak`` x (1 + cos(pi x progress)) / 2 to 0 at ``decay_steps`` (transformers'
    ``get_cosine_schedule_with_warmup``, optax's ``warmup_cosine_decay_schedule`` with init and end 0),
    in float64."""
    step = np.arange(decay_steps + 1, dtype=np.float64)
    warm = peak * step / max(warmup_steps, 1)
    progress = (step - warmup_steps) / max(decay_steps - warmup_steps, 1)
    cosine = peak * 0.5 * (1.0 + np.cos(np.pi * np.clip(progress, 0.0, 1.0)))
    return np.where(step < warmup_steps, warm, cosine).astype(np.float32)


def make_optimizer(
    optim: ml_collections.ConfigDict,
    total_steps: int,
    *,
    lr: jax.Array | float | None = None,
    weight_decay: jax.Array | float | None = None,
) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW (or Adam) with the schedule; weight decay on every parameter.

    ``lr`` and ``weight_decay`` (float32 scalars, may be traced: one per vmapped member) replace
    ``optim.lr`` and ``optim.weight_decay``; None keeps the config's. The optimiser state's structure and
    shapes do not depend on them. ValueError names a bad ``--config.optim.name`` or ``schedule``.

    With ``optim.skip_absent_rows`` the update takes ``row_mask=`` (``reasoner.row_presence``) and, as
    PyTorch does for parameters without a gradient, leaves the rows of per-puzzle stacks that the batch did
    not use exactly as they were (moments, step count and weights).
    """
    if optim.name not in ("adam", "adamw"):
        raise ValueError(f"--config.optim.name={optim.name!r} is not 'adamw' or 'adam'")
    schedule = learning_rate_schedule(optim, total_steps, lr)
    decay = (optim.weight_decay if weight_decay is None else weight_decay) if optim.name == "adamw" else 0.0
    if optim.get("skip_absent_rows", False):
        opt = row_sparse_adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=decay)
    elif optim.name == "adamw":
        opt = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=decay)
    else:
        opt = optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps)
    if optim.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(optim.grad_clip), opt)
    return opt


def skips_absent_rows(opt_state) -> bool:
    """Whether ``opt_state`` (any optimiser state tree) is :func:`row_sparse_adam`'s: rows of per-puzzle
    stacks that a batch did not use stay exactly as they were."""
    nodes = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, RowSparseAdamState))
    return any(isinstance(x, RowSparseAdamState) for x in nodes)


class RowSparseAdamState(NamedTuple):
    step: jax.Array  # optimiser steps taken (drives the learning-rate schedule, as a PyTorch scheduler)
    count: Any  # per leaf, per row of its leading axis: the updates that row has had
    mu: Any
    nu: Any


def row_sparse_adam(
    schedule: optax.Schedule, *, b1: float, b2: float, eps: float, weight_decay: float
) -> optax.GradientTransformationExtraArgs:
    """Adam(W) whose per-puzzle rows update only when the batch used them (PyTorch's AdamW per module).

    ``update(grads, state, params, row_mask=tree)`` with ``row_mask`` a tree like ``params`` holding a bool
    [rows] per stacked leaf (None for shared leaves, always updated). A masked-out row keeps its moments,
    its own step count (so its bias correction is the module's own, as in PyTorch) and its weights; weight
    decay is decoupled and scaled by the learning rate, as ``torch.optim.AdamW`` does.
    """

    def init(params):
        return RowSparseAdamState(
            step=jnp.zeros((), jnp.int32),
            count=jax.tree.map(lambda p: jnp.zeros(jnp.shape(p)[:1], jnp.int32), params),
            mu=jax.tree.map(jnp.zeros_like, params),
            nu=jax.tree.map(jnp.zeros_like, params),
        )

    def leaf(g, m, v, c, p, rows, lr):
        on = jnp.ones(c.shape, bool) if rows is None else rows
        c_new = c + on.astype(jnp.int32)
        expand = (1,) * (g.ndim - c.ndim)
        on, steps = on.reshape(on.shape + expand), jnp.maximum(c_new, 1).reshape(c.shape + expand)
        m_new = jnp.where(on, b1 * m + (1 - b1) * g, m)
        v_new = jnp.where(on, b2 * v + (1 - b2) * g * g, v)
        m_hat = m_new / (1 - b1 ** steps.astype(g.dtype))
        v_hat = v_new / (1 - b2 ** steps.astype(g.dtype))
        u = -lr * (m_hat / (jnp.sqrt(v_hat) + eps) + weight_decay * p)
        return jnp.where(on, u, 0).astype(g.dtype), m_new, v_new, c_new

    def update(grads, state, params=None, *, row_mask=None, **_):
        if params is None:
            raise ValueError("row_sparse_adam needs params (decoupled weight decay)")
        treedef = jax.tree.structure(params)
        # Row masks hold None for shared leaves, so flatten every tree up to the parameters' structure.
        masks = [None] * treedef.num_leaves if row_mask is None else treedef.flatten_up_to(row_mask)
        parts = (grads, state.mu, state.nu, state.count, params)
        lr = schedule(state.step)
        out = [
            leaf(*args, rows, lr)
            for *args, rows in zip(*(treedef.flatten_up_to(t) for t in parts), masks, strict=True)
        ]
        updates, mu, nu, count = (treedef.unflatten(list(x)) for x in zip(*out, strict=True))
        return updates, RowSparseAdamState(step=state.step + 1, count=count, mu=mu, nu=nu)

    return optax.GradientTransformationExtraArgs(init, update)
