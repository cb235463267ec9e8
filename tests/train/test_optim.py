"""The optimiser and schedule against SPEC section 7, value by value."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from configs import smarter
from smartvlm_jax import optim


def _reference_lr(step: int, peak: float, warmup: int, total: int) -> float:
    """transformers' cosine-with-warm-up, the schedule the reference steps once per update."""
    if step < warmup:
        return peak * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def test_schedule_matches_spec_at_chosen_steps():
    cfg = smarter.get_config().optim
    total = 3 * 500
    schedule = optim.learning_rate_schedule(cfg, total)
    for step in (0, 1, 5, 9, 10, 11, 400, 750, 1499, 1500):
        np.testing.assert_allclose(
            float(schedule(step)), _reference_lr(step, 3e-4, 10, total), rtol=1e-5, atol=1e-9
        )
    assert float(schedule(0)) == 0.0  # the first update uses lr 0


def test_schedule_table_equals_optax_at_every_step():
    """The host table read in the step is the reference's schedule (float64) rounded to float32 at every
    count, including no warm-up and a run shorter than its warm-up, and counts past the end read 0; optax's
    warm-up cosine (float32 arithmetic, whose 1 + cos cancels near the end) agrees to 1e-7 of the peak."""
    cfg = smarter.get_config().optim
    for warmup, total in [(10, 1500), (0, 37), (10, 4)]:
        cfg.warmup_steps = warmup
        decay = max(total, warmup + 1)
        ours = np.asarray(jax.vmap(optim.learning_rate_schedule(cfg, total))(np.arange(decay + 3)))
        reference = [_reference_lr(min(c, decay), cfg.lr, warmup, decay) for c in range(decay + 3)]
        np.testing.assert_array_equal(ours, np.float32(reference))
        assert ours[-1] == 0.0
        optax_lr = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, decay, 0.0)
        np.testing.assert_allclose(
            ours, jax.vmap(optax_lr)(np.arange(decay + 3)), rtol=1e-5, atol=1e-7 * cfg.lr
        )


def test_adamw_with_clipping_matches_torch():
    """Three updates of clipped AdamW equal torch's AdamW + clip_grad_norm_ on the same gradients."""
    cfg = smarter.get_config().optim
    cfg.warmup_steps = 1  # make the first updates non-zero so the comparison has teeth
    tx = optim.make_optimizer(cfg, total_steps=20)
    schedule = optim.learning_rate_schedule(cfg, 20)
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(4, 3)).astype(np.float32)
    grads = [rng.normal(size=(4, 3)).astype(np.float32) * s for s in (0.1, 5.0, 1.0)]

    params = {"w": jnp.asarray(w0)}
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)

    w = torch.nn.Parameter(torch.tensor(w0))
    opt = torch.optim.AdamW(
        [w], lr=cfg.lr, betas=(cfg.b1, cfg.b2), eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: float(schedule(s)) / cfg.lr)
    for g in grads:
        w.grad = torch.tensor(g)
        torch.nn.utils.clip_grad_norm_([w], cfg.grad_clip)
        opt.step()
        sched.step()
    np.testing.assert_allclose(np.asarray(params["w"]), w.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert jax.tree.leaves(params)[0].dtype == jnp.float32


def test_row_sparse_adamw_matches_torch_modules_without_gradients():
    """Stacked per-puzzle rows vs one torch parameter per row: rows a batch does not use get grad None
    in PyTorch and AdamW skips them (no decay, no moments, own step count); ours must do the same."""
    cfg = smarter.get_config().optim
    cfg.warmup_steps = 1
    cfg.skip_absent_rows = True
    tx = optim.make_optimizer(cfg, total_steps=20)
    schedule = optim.learning_rate_schedule(cfg, 20)
    rng = np.random.default_rng(1)
    rows0 = rng.normal(size=(3, 4)).astype(np.float32)
    shared0 = rng.normal(size=(2,)).astype(np.float32)
    present = [np.array([1, 0, 1], bool), np.array([0, 1, 1], bool), np.array([1, 0, 0], bool)]
    grads = [
        (rng.normal(size=(3, 4)).astype(np.float32) * p[:, None], rng.normal(size=(2,))) for p in present
    ]

    params = {"stack": jnp.asarray(rows0), "shared": jnp.asarray(shared0)}
    state = tx.init(params)
    update = jax.jit(tx.update)
    for (g_rows, g_shared), p in zip(grads, present, strict=True):
        g = {"stack": jnp.asarray(g_rows), "shared": jnp.asarray(g_shared, jnp.float32)}
        updates, state = update(g, state, params, row_mask={"stack": jnp.asarray(p), "shared": None})
        params = optax.apply_updates(params, updates)

    rows = [torch.nn.Parameter(torch.tensor(r)) for r in rows0]
    shared = torch.nn.Parameter(torch.tensor(shared0))
    opt = torch.optim.AdamW([*rows, shared], lr=cfg.lr, betas=(cfg.b1, cfg.b2), eps=cfg.eps, weight_decay=0.2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: float(schedule(s)) / cfg.lr)
    for (g_rows, g_shared), p in zip(grads, present, strict=True):
        opt.zero_grad(set_to_none=True)
        for r, g, used in zip(rows, g_rows, p, strict=True):
            r.grad = torch.tensor(g) if used else None
        shared.grad = torch.tensor(g_shared, dtype=torch.float32)
        torch.nn.utils.clip_grad_norm_([*rows, shared], cfg.grad_clip)
        opt.step()
        sched.step()
    expected = np.stack([r.detach().numpy() for r in rows])
    np.testing.assert_allclose(np.asarray(params["stack"]), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(params["shared"]), shared.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(expected[1], rows0[1])  # row 1 was used once: it moved, and only then
    np.testing.assert_array_equal(np.asarray(state[1].count["stack"]), [2, 1, 2])


@pytest.mark.slow
def test_train_step_on_the_run_rows_equals_the_full_step(monkeypatch):
    """With the row-sparse optimiser the step updates only the run's image-encoder rows (the others can
    never change); three steps of that equal three steps on the whole [102, ...] stack."""
    import functools

    from smartvlm_jax import reasoner, train
    from smartvlm_jax.reasoner import presence
    from tests.support.reasoner import random_batch, small_config

    cfg = small_config()
    config = smarter.get_config()
    config.optim.warmup_steps = 1
    model = reasoner.build(cfg)
    tx = optim.make_optimizer(config.optim, total_steps=20)
    batches = []
    for seed, pids in enumerate([[3, 16, 3, 58], [7, 94, 94, 39], [3, 3, 25, 18]]):
        vision, text, pid, labels = random_batch(cfg, pids, seed)
        batches.append(dict(vision=vision, text=text, puzzle_ids=pid, labels=labels, mask=np.ones(4, bool)))
    inputs = (batches[0][k] for k in ("vision", "text", "puzzle_ids"))
    params = jax.jit(model.init)(jax.random.key(0), *inputs)["params"]
    rng = jax.random.key_data(jax.random.key(1))
    state0 = train.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), rng)

    def run_steps():
        step = jax.jit(
            functools.partial(
                train.train_step,
                model=model,
                model_cfg=cfg,
                tx=tx,
                schedule=optim.learning_rate_schedule(config.optim, 20),
            )
        )
        state, losses = state0, []
        for batch in batches:
            state, metrics = step(state, batch, None)
            losses.append(float(metrics.loss.compute()))
        return state, losses

    compact, compact_losses = run_steps()
    monkeypatch.setattr(presence, "encoder_rows", lambda cfg: None)
    full, full_losses = run_steps()
    np.testing.assert_allclose(compact_losses, full_losses, rtol=1e-6, atol=1e-6)
    for a, b in zip(jax.tree.leaves(compact), jax.tree.leaves(full), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    enc, enc0 = (np.asarray(s.params["im_encoder"]["0_kernel"]) for s in (compact, state0))
    np.testing.assert_array_equal(enc[[1, 2, 100]], enc0[[1, 2, 100]])  # outside the run: untouched
    assert not np.allclose(enc[3], enc0[3])  # a run row moved
    counts = np.asarray(compact.opt_state[1].count["im_encoder"]["0_kernel"])
    assert counts[3] == 2 and counts[7] == 1 and counts[1] == 0
