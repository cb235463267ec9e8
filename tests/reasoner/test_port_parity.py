"""JAX head vs the PyTorch port (reference layout and loops), same weights, fp32.

Targets: logits max|diff| <= 1e-5, loss <= 1e-6, parameter gradients relative (global L2) <= 1e-4,
with and without reference_quirks, on batches mixing ordinary and sequence puzzles with repeated and
absent puzzles. With dropout on, output statistics over many draws agree.
"""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from smartvlm_jax import reasoner  # noqa: E402
from smartvlm_jax.convert import reference  # noqa: E402
from tests.support.reasoner import random_batch, small_config  # noqa: E402
from tests.support.torch_port import head as port_lib  # noqa: E402

PIDS = [16, 3, 16, 58, 39, 3, 94, 16, 18, 16, 39, 58]  # 7 and 25 absent; 16 four times


def _pair(cfg, seed=0):
    torch.manual_seed(seed)
    port = port_lib.TorchSmarterHead(cfg).eval()
    return port, reasoner.build(cfg), port_lib.jax_params(port)


def _compare(cfg):
    port, model, params = _pair(cfg)
    vision, text, pid, labels = random_batch(cfg, PIDS)
    loss_j, grads_j = jax.jit(
        jax.value_and_grad(
            lambda p: reasoner.loss(model.apply({"params": p}, vision, text, pid), labels, pid, cfg)
        )
    )(params)
    logits_j = np.asarray(jax.jit(model.apply)({"params": params}, vision, text, pid))

    pid_t = torch.from_numpy(pid).long()
    outputs = port(torch.from_numpy(vision), torch.from_numpy(text), pid_t)
    logits_t = port_lib.padded_logits(outputs, pid_t, cfg).detach().numpy()
    loss_t = port_lib.reference_loss(outputs, torch.from_numpy(labels).long(), pid_t)
    loss_t.backward()
    grads_sd = {
        k: (p.grad if p.grad is not None else torch.zeros_like(p)).numpy() for k, p in port.named_parameters()
    }
    grads_t = reference.params_from_reference(grads_sd, cfg)

    num = sum(
        float(np.sum((np.asarray(a) - b) ** 2))
        for a, b in zip(jax.tree.leaves(grads_j), jax.tree.leaves(grads_t), strict=True)
    )
    den = sum(float(np.sum(b**2)) for b in jax.tree.leaves(grads_t))
    return np.abs(logits_j - logits_t).max(), abs(float(loss_j) - loss_t.item()), np.sqrt(num / den)


@pytest.mark.parametrize("quirks", [False, True])
@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(head_impl="ragged"),
        dict(use_qf=False),
        dict(use_single_image_head=True),
        dict(variant="fused"),
    ],
    ids=["qf", "ragged", "no_qf", "single_head", "fused"],
)
@pytest.mark.slow
def test_forward_loss_and_gradients_match(quirks, overrides):
    logit_diff, loss_diff, grad_rel = _compare(small_config(quirks, **overrides))
    assert logit_diff <= 1e-5
    assert loss_diff <= 1e-6
    assert grad_rel <= 1e-4


def test_quirks_change_sequence_logits_only():
    """The two modes share ordinary-puzzle logits and differ on repeated sequence puzzles."""
    vision, text, pid, _ = random_batch(small_config(), PIDS)
    out = {}
    for quirks in (False, True):
        cfg = small_config(quirks)
        port, model, params = _pair(cfg)
        out[quirks] = np.asarray(jax.jit(model.apply)({"params": params}, vision, text, pid))
    ordinary = ~np.isin(pid, [16, 18, 39])
    np.testing.assert_allclose(out[False][ordinary], out[True][ordinary], atol=1e-6)
    assert np.abs(out[False][pid == 16] - out[True][pid == 16]).max() > 1e-3


def test_jax_to_port_transfer_roundtrip():
    cfg = small_config(True)
    model = reasoner.build(cfg)
    vision, text, pid, _ = random_batch(cfg, PIDS)
    params = jax.jit(model.init)(jax.random.PRNGKey(3), vision, text, pid)["params"]
    port = port_lib.TorchSmarterHead(cfg).eval()
    port_lib.load_jax_params(port, params)
    back = port_lib.jax_params(port)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back), strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)
    pid_t = torch.from_numpy(pid).long()
    with torch.no_grad():
        logits_t = port_lib.padded_logits(
            port(torch.from_numpy(vision), torch.from_numpy(text), pid_t), pid_t, cfg
        )
    assert (
        np.abs(np.asarray(model.apply({"params": params}, vision, text, pid)) - logits_t.numpy()).max()
        <= 1e-5
    )


@pytest.mark.slow
def test_dropout_statistics_match():
    """With dropout on, mean and variance over many draws of the outputs agree (within sampling error)."""
    cfg = small_config(pdrop=0.5)
    port, model, params = _pair(cfg)
    pids = [3, 16, 58]
    vision, text, pid, _ = random_batch(cfg, pids)
    n = 300
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    apply = jax.jit(
        jax.vmap(
            lambda k: model.apply({"params": params}, vision, text, pid, train=True, rngs={"dropout": k})
        )
    )
    jax_draws = np.asarray(apply(keys))[:, :, 0, :3]  # [n, B, 3 classes of position 0]
    port.train()
    pid_t = torch.from_numpy(pid).long()
    vt, tt = torch.from_numpy(vision), torch.from_numpy(text)
    with torch.no_grad():
        torch_draws = np.stack(
            [port_lib.padded_logits(port(vt, tt, pid_t), pid_t, cfg).numpy()[:, 0, :3] for _ in range(n)]
        )
    mean_j, mean_t = jax_draws.mean(0), torch_draws.mean(0)
    var_j, var_t = jax_draws.var(0), torch_draws.var(0)
    # Means within 5 standard errors; variances (relative s.e. about sqrt(2/n) = 7%) within 35%.
    assert np.all(np.abs(mean_j - mean_t) <= 5 * np.sqrt((var_j + var_t) / n)), (mean_j, mean_t)
    assert np.all(np.abs(var_j - var_t) <= 0.35 * var_t), (var_j, var_t)
    assert np.var(jax_draws, 0).min() > 0  # dropout really acts
