"""The optimiser of a run, built in one place from the config (big_vision's ``optax.py`` idea)."""

from __future__ import annotations

import ml_collections
import optax


def learning_rate_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear from 0 over ``warmup_steps``, then cosine to 0 at ``total_steps`` (SPEC section 7).

    The schedule is read at the update's step count, so the first update uses lr 0, as the reference's
    warm-up does. ``schedule="constant"`` (the SMART baseline) keeps ``lr`` throughout.
    """
    if optim.schedule == "constant":
        return optax.constant_schedule(optim.lr)
    if optim.schedule != "warmup_cosine":
        raise ValueError(f"config.optim.schedule={optim.schedule!r} is not 'warmup_cosine' or 'constant'")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim.lr,
        warmup_steps=optim.warmup_steps,
        decay_steps=max(total_steps, optim.warmup_steps + 1),
        end_value=0.0,
    )


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW (or Adam) with the schedule; weight decay on every parameter."""
    schedule = learning_rate_schedule(optim, total_steps)
    if optim.name == "adamw":
        opt = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay)
    elif optim.name == "adam":
        opt = optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps)
    else:
        raise ValueError(f"config.optim.name={optim.name!r} is not 'adamw' or 'adam'")
    if optim.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(optim.grad_clip), opt)
    return opt
