"""The SMART baseline head: parity with its PyTorch port (logits, loss, gradients), quirks, dispatch."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from smartvlm_jax import reasoner
from smartvlm_jax.reasoner import baseline
from tests.support.baseline import PIDS, batch, small_config
from tests.support.torch_port import baseline as port_lib
from tests.support.torch_port.head import padded_logits, reference_loss


def relative(a, b) -> float:
    fa = np.concatenate([np.ravel(x) for x in jax.tree.leaves(a)])
    fb = np.concatenate([np.ravel(x) for x in jax.tree.leaves(b)])
    return float(np.linalg.norm(fa - fb) / np.linalg.norm(fb))


@pytest.mark.parametrize(
    "quirks,overrides",
    [(False, {}), (True, {}), (True, {"use_single_image_head": True, "head_impl": "ragged"})],
)
@pytest.mark.slow
def test_port_parity_logits_loss_grads(quirks, overrides):
    cfg = small_config(quirks, **overrides)
    model = reasoner.build(cfg)
    assert isinstance(model, baseline.BaselineHead)
    vision, text, pids, labels = batch(cfg)
    params = model.init(jax.random.PRNGKey(1), vision, text, pids)["params"]
    torch.manual_seed(0)
    port = port_lib.TorchBaselineHead(cfg)
    port_lib.load_jax_params(port, params)
    # The rename table round-trips: the port's weights give back the JAX params exactly.
    np.testing.assert_equal(jax.tree.map(np.asarray, params), port_lib.jax_params(port))

    def loss_fn(p):
        logits = model.apply({"params": p}, vision, text, pids)
        return reasoner.loss(logits, labels, pids, cfg), logits

    (loss, logits), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    t_pids = torch.from_numpy(pids.astype(np.int64))
    out = port(torch.from_numpy(vision), torch.from_numpy(text), t_pids)
    t_logits = padded_logits(out, t_pids, cfg)
    np.testing.assert_allclose(np.asarray(logits), t_logits.detach().numpy(), atol=1e-5, rtol=0)
    t_loss = reference_loss(out, torch.from_numpy(labels.astype(np.int64)), t_pids)
    assert abs(float(loss) - t_loss.item()) < 1e-5
    t_loss.backward()
    t_grads = port_lib.params_from_state(
        {
            k: p.grad.numpy() if p.grad is not None else np.zeros_like(p.detach().numpy())
            for k, p in port.named_parameters()
        },
        cfg,
    )
    assert relative(jax.tree.map(np.asarray, grads), t_grads) < 1e-5


@pytest.mark.slow
def test_quirks_couple_sequence_samples_only():
    """Quirks change sequence-puzzle logits (hidden flows across a puzzle's samples), nothing else."""
    vision, text, pids, _ = batch(small_config())
    outs = {}
    for quirks in (False, True):
        cfg = small_config(quirks)
        model = reasoner.build(cfg)
        params = model.init(jax.random.PRNGKey(0), vision, text, pids)
        outs[quirks] = np.asarray(model.apply(params, vision, text, pids))
    seq = np.isin(pids, [16, 18, 39])
    np.testing.assert_array_equal(outs[False][~seq], outs[True][~seq])
    assert np.abs(outs[False][pids == 16] - outs[True][pids == 16]).max() > 1e-4
    # Without quirks a sample's logits do not depend on the rest of the batch.
    cfg = small_config()
    model = reasoner.build(cfg)
    params = model.init(jax.random.PRNGKey(0), vision, text, pids)
    alone = np.asarray(model.apply(params, vision[1:2], text[1:2], pids[1:2]))
    np.testing.assert_allclose(alone[0], outs[False][1], atol=1e-6)


def test_masking_and_shapes():
    cfg = small_config()
    vision, text, pids, _ = batch(cfg)
    model = reasoner.build(cfg)
    params = model.init(jax.random.PRNGKey(0), vision, text, pids)
    logits = np.asarray(model.apply(params, vision, text, pids))
    assert logits.shape == (len(PIDS), cfg.num_decode_steps, 45)
    assert (logits[pids == 94][:, 0, 3:] == reasoner.MASKED_LOGIT).all()  # C_94 = 3
    assert (logits[pids == 3][:, 1:] == reasoner.MASKED_LOGIT).all()  # ordinary: position 0 only
    assert (logits[pids == 16][:, :, :27] > reasoner.MASKED_LOGIT).all()
    with pytest.raises(ValueError, match="token states"):
        model.apply(params, vision, text[:, 0], pids)


def test_unknown_head_is_named():
    cfg = small_config()
    cfg.head = "resnet"
    with pytest.raises(ValueError, match="head"):
        reasoner.build(cfg)
