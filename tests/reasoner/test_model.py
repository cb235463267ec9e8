"""Shapes, masking, loss and model dirs of the JAX head (no PyTorch needed)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smartvlm_jax import reasoner
from smartvlm_jax.reasoner import presence, puzzle_heads
from tests.support.reasoner import random_batch, small_config

PIDS = [16, 3, 16, 58, 39, 3, 94, 16, 18]  # repeated, absent (7, 25) and sequence puzzles


_INIT_CACHE: dict = {}


def _init(cfg, pids):
    """Model, variables and a batch; variables are cached per config (initialisation compiles slowly)."""
    vision, text, pid, labels = random_batch(cfg, pids)
    model = reasoner.build(cfg)
    key = cfg.to_json()
    if key not in _INIT_CACHE:
        _INIT_CACHE[key] = jax.jit(model.init)(jax.random.PRNGKey(0), vision, text, pid)
    return model, _INIT_CACHE[key], (vision, text, pid, labels)


@pytest.mark.parametrize("quirks", [False, True])
@pytest.mark.slow
def test_logits_shape_and_masking(quirks):
    cfg = small_config(quirks)
    model, variables, (vision, text, pid, _) = _init(cfg, PIDS)
    logits = np.asarray(jax.jit(model.apply)(variables, vision, text, pid))
    assert logits.shape == (len(PIDS), cfg.num_decode_steps, max(cfg.num_classes))
    classes = dict(zip(cfg.puzzle_ids, cfg.num_classes, strict=True))
    for i, p in enumerate(PIDS):
        c = classes[p]
        assert np.all(logits[i, :, c:] == reasoner.MASKED_LOGIT)
        assert np.all(np.abs(logits[i, 0, :c]) < 1e3)
        if p in (16, 18, 39):
            assert np.all(np.abs(logits[i, :, :c]) < 1.0)  # GRU hidden states lie in (-1, 1)
        else:
            assert np.all(logits[i, 1:] == reasoner.MASKED_LOGIT)
    preds = np.asarray(reasoner.predictions(jnp.asarray(logits), pid, cfg))
    assert preds.shape == (len(PIDS), cfg.num_decode_steps) and preds.dtype == np.int32
    assert all(preds[i, 0] < classes[p] for i, p in enumerate(PIDS))


@pytest.mark.slow
def test_samples_independent_without_quirks_and_coupled_with():
    """Without quirks a sample's logits do not depend on the rest of the batch; with them, a sequence
    sample depends on the earlier samples of its own puzzle only."""
    for quirks in (False, True):
        cfg = small_config(quirks)
        model, variables, (vision, text, pid, _) = _init(cfg, PIDS)
        full = np.asarray(jax.jit(model.apply)(variables, vision, text, pid))
        last16 = 7  # third sample of puzzle 16
        alone = np.asarray(jax.jit(model.apply)(variables, vision[last16:], text[last16:], pid[last16:]))
        diff = np.abs(full[last16] - alone[0]).max()
        assert (diff < 1e-6) != quirks
        # Perturbing a sample of another puzzle never changes it.
        v2 = vision.copy()
        v2[4] += 1.0  # puzzle 39
        other = np.asarray(jax.jit(model.apply)(variables, v2, text, pid))
        np.testing.assert_allclose(other[last16], full[last16], atol=1e-6)


def test_padded_gru_units_do_not_change_smaller_decoder():
    """Puzzle 18 (C=6) decodes the same whether the GRU stack is padded to 27 or not."""
    cfg_big = small_config()
    cfg_small = small_config(puzzle_ids=[18], num_classes=[6])
    model_b, var_b, (vision, text, pid, _) = _init(cfg_big, [18, 18])
    model_s = reasoner.build(cfg_small)
    var_s = jax.eval_shape(model_s.init, jax.random.PRNGKey(1), vision, text, pid)
    # Copy every shared weight, and slot 18's GRU weights, into the small model.
    pb = var_b["params"]
    ps = jax.tree.map(lambda x: x, var_s["params"])
    for name in pb:
        if name not in ("ans_decoder_mlp", "ans_decoder_gru"):
            ps[name] = pb[name]
    slot = cfg_big.puzzle_ids.index(18) - 2  # sequence puzzles: 16, 18, 39 -> slot 1
    assert slot == 1
    ps["ans_decoder_gru"] = {
        "weight_ih": pb["ans_decoder_gru"]["weight_ih"][slot : slot + 1, :, :, :6],
        "weight_hh": pb["ans_decoder_gru"]["weight_hh"][slot : slot + 1, :, :6, :6],
        "bias_ih": pb["ans_decoder_gru"]["bias_ih"][slot : slot + 1, :, :6],
        "bias_hh": pb["ans_decoder_gru"]["bias_hh"][slot : slot + 1, :, :6],
    }
    big = np.asarray(jax.jit(model_b.apply)(var_b, vision, text, pid))[..., :6]
    small = np.asarray(jax.jit(model_s.apply)({"params": ps}, vision, text, pid))
    np.testing.assert_allclose(big, small, atol=1e-6)


def test_loss_matches_per_puzzle_definition_and_mask():
    cfg = small_config()
    model, variables, (vision, text, pid, labels) = _init(cfg, PIDS)
    logits = np.asarray(jax.jit(model.apply)(variables, vision, text, pid), np.float64)

    def ce(row, lab):
        return np.log(np.exp(row - row.max()).sum()) + row.max() - row[lab]

    def expected(keep):
        per = {}
        for i, p in enumerate(PIDS):
            if not keep[i]:
                continue
            if p in (16, 18, 39):
                v = np.mean([ce(logits[i, k], labels[i, k]) for k in range(cfg.num_decode_steps)])
            else:
                v = ce(logits[i, 0], labels[i, 0])
            per.setdefault(p, []).append(v)
        return np.mean([np.mean(v) for v in per.values()])

    loss_fn = jax.jit(lambda lg, lb, p, m: reasoner.loss(lg, lb, p, cfg, mask=m))
    got = float(loss_fn(jnp.asarray(logits, jnp.float32), labels, pid, np.ones(len(PIDS), bool)))
    assert abs(got - expected([True] * len(PIDS))) < 1e-5
    keep = np.array([True, False, True, False, True, True, False, True, True])  # drops 58 and 94
    bad_labels = labels.copy()
    bad_labels[~keep] = -5  # padding samples may carry garbage labels
    got = float(loss_fn(jnp.asarray(logits, jnp.float32), bad_labels, pid, keep))
    assert abs(got - expected(keep)) < 1e-5


@pytest.mark.parametrize("impl", ["ragged", "dense", "auto"])
@pytest.mark.slow
def test_head_impls_agree(impl):
    cfg = small_config(head_impl=impl)
    model, variables, (vision, text, pid, labels) = _init(cfg, PIDS)
    ref_model = reasoner.build(small_config(head_impl="gather"))

    def loss_of(m, params):
        return reasoner.loss(m.apply({"params": params}, vision, text, pid), labels, pid, cfg)

    l1, g1 = jax.jit(jax.value_and_grad(lambda p: loss_of(model, p)))(variables["params"])
    l2, g2 = jax.jit(jax.value_and_grad(lambda p: loss_of(ref_model, p)))(variables["params"])
    assert abs(float(l1) - float(l2)) < 1e-6
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_auto_impl_picks_dense_for_stacks_at_most_half_the_batch():
    assert puzzle_heads.resolve_impl("auto", 5, 10) == "dense"
    assert puzzle_heads.resolve_impl("auto", 6, 10) == "gather"
    assert puzzle_heads.resolve_impl("auto", 102, 128) == "gather"  # the full run's image encoders
    assert puzzle_heads.resolve_impl("ragged", 2, 128) == "ragged"  # an explicit choice is kept


def test_encoder_rows_model_equals_the_full_stack():
    """The head on the run's encoder rows only (what the train step differentiates) gives the full
    head's logits, with ids outside those rows still valid inputs."""
    cfg = small_config()
    model, variables, (vision, text, pid, _) = _init(cfg, PIDS)
    rows = presence.encoder_rows(cfg)
    assert rows == tuple(sorted(cfg.puzzle_ids))
    cut = presence.take_encoder_rows(variables, rows)
    assert cut["params"]["im_encoder"]["0_kernel"].shape[0] == len(rows)
    full = jax.jit(model.apply)(variables, vision, text, pid)
    compact = jax.jit(model.clone(encoder_rows=rows).apply)(cut, vision, text, pid)
    np.testing.assert_allclose(compact, full, rtol=1e-6, atol=1e-6)
    back = presence.put_encoder_rows(variables, cut, rows)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(variables), strict=True):
        np.testing.assert_array_equal(a, b)
    assert presence.encoder_rows(small_config(use_single_image_head=True)) is None


def test_dropout_changes_training_outputs_only():
    cfg = small_config()
    model, variables, (vision, text, pid, _) = _init(cfg, PIDS)
    ev = jax.jit(model.apply)(variables, vision, text, pid)
    train = jax.jit(lambda k: model.apply(variables, vision, text, pid, train=True, rngs={"dropout": k}))
    tr1, tr2 = train(jax.random.PRNGKey(1)), train(jax.random.PRNGKey(2))
    assert np.abs(np.asarray(tr1) - np.asarray(tr2)).max() > 1e-4
    np.testing.assert_array_equal(ev, jax.jit(model.apply)(variables, vision, text, pid))


def test_cross_attention_dropout_counts_are_binomial():
    """The QF cross-attention's kept-probability counts S ~ Binomial(n, 1 - rate), drawn by inverting the
    CDF: a chi-square test of the frequencies against the pmf (scipy) at a small and at the model's n,
    with the rate traced as a member's is; rate 0 keeps all n, rate 1 none."""
    from scipy import stats

    from smartvlm_jax.reasoner.qf import binomial_by_inversion

    draws = 200_000
    for n, p, traced in [(25, 0.9, True), (110 * 110, 0.8, True), (25, 0.9, False), (110 * 110, 0.8, False)]:
        if traced:  # a member's rate: the CDF computed in the step
            x = jax.jit(lambda key, p, n=n: binomial_by_inversion(key, n, p, (draws,)))(jax.random.key(3), p)
        else:  # a run's rate: scipy's CDF, a constant
            x = jax.jit(lambda key, n=n, p=p: binomial_by_inversion(key, n, p, (draws,)))(jax.random.key(4))
        counts = np.bincount(np.asarray(x).astype(int), minlength=n + 1)
        pmf = stats.binom(n, p).pmf(np.arange(n + 1))
        # chi-square needs expected counts well above a few: the tails' values pooled into one cell
        cells = pmf * draws > 20
        observed = np.append(counts[cells], counts[~cells].sum())
        expected = np.append(pmf[cells], pmf[~cells].sum()) * draws
        chi2 = (((observed - expected) ** 2) / expected).sum()
        assert stats.chi2.sf(chi2, len(observed) - 1) > 1e-3, (n, p, traced, chi2)
    one = jax.vmap(lambda p: binomial_by_inversion(jax.random.key(0), 12100, p, (4,)))(jnp.array([1.0, 0.0]))
    np.testing.assert_array_equal(one, [[12100] * 4, [0] * 4])
    for p, all_or_none in [(1.0, 12100), (0.0, 0)]:
        np.testing.assert_array_equal(
            binomial_by_inversion(jax.random.key(0), 12100, p, (4,)), [all_or_none] * 4
        )


@pytest.mark.parametrize(
    "field,value",
    [
        ("variant", "clip"),
        ("head_impl", "loop"),
        ("puzzle_ids", [5, 3]),
        ("puzzle_ids", [0, 3]),
        ("num_classes", [5]),
        ("pdrop", 1.5),
    ],
)
def test_bad_config_names_field(field, value):
    cfg = small_config()
    if field == "num_classes":
        cfg.num_classes = value
    elif field == "puzzle_ids":
        cfg.puzzle_ids = value
        cfg.num_classes = [3, 3]
    else:
        cfg[field] = value
    with pytest.raises(ValueError, match=field):
        reasoner.build(cfg)


@pytest.mark.slow
def test_variants_build_and_run():
    # (fused features and the single head with quirks off are covered by the port parity tests)
    for overrides in (
        dict(use_qf=False, use_single_image_head=True, reference_quirks=True),
        dict(puzzle_ids=[16, 39], num_classes=[27, 27]),
        dict(puzzle_ids=[1, 2], num_classes=[4, 9]),
    ):
        cfg = small_config(**overrides)
        pids = [cfg.puzzle_ids[-1], cfg.puzzle_ids[0], cfg.puzzle_ids[-1]]
        model, variables, (vision, text, pid, labels) = _init(cfg, pids)
        out = jax.jit(model.apply)(variables, vision, text, pid)
        assert out.shape == (3, cfg.num_decode_steps, max(cfg.num_classes))
        assert np.isfinite(float(jax.jit(functools.partial(reasoner.loss, cfg=cfg))(out, labels, pid)))
        params = variables["params"]
        assert ("q_MLP" in params) != cfg.use_qf and ("qf" in params) == cfg.use_qf


def test_save_load_roundtrip(tmp_path):
    cfg = small_config(quirks=True)
    model, variables, (vision, text, pid, _) = _init(cfg, PIDS)
    reasoner.save(tmp_path / "work" / "best_model", cfg, variables["params"])
    model2, variables2, cfg2 = reasoner.load(tmp_path / "work")
    assert cfg2.to_dict() == cfg.to_dict()
    np.testing.assert_array_equal(
        jax.jit(model.apply)(variables, vision, text, pid),
        jax.jit(model2.apply)(variables2, vision, text, pid),
    )
    with pytest.raises(FileExistsError):
        reasoner.save(tmp_path / "work" / "best_model", cfg, variables["params"])
    assert sorted(p.name for p in (tmp_path / "work" / "best_model").iterdir()) == [
        "config.json",
        "params.safetensors",
    ]
    summary = reasoner.param_summary(variables["params"])
    total = sum(x.size for x in jax.tree.leaves(variables["params"]))
    assert f"{total:,d}" in summary.splitlines()[-1] and "im_encoder" in summary


def test_model_dirs_of_the_orbax_layout_still_load(tmp_path):
    """Model dirs written before params.safetensors hold an Orbax checkpoint in params/."""
    import orbax.checkpoint as ocp

    cfg = small_config()
    model, variables, (vision, text, pid, _) = _init(cfg, PIDS)
    legacy = tmp_path / "legacy"
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(legacy / "params", jax.tree.map(np.asarray, variables["params"]))
    ckptr.wait_until_finished()
    (legacy / "config.json").write_text(cfg.to_json())
    model2, variables2, _ = reasoner.load(legacy)
    np.testing.assert_array_equal(
        jax.jit(model.apply)(variables, vision, text, pid),
        jax.jit(model2.apply)(variables2, vision, text, pid),
    )


def test_a_model_dir_whose_params_do_not_fit_names_the_tensor(tmp_path):
    from safetensors.numpy import load_file, save_file

    cfg = small_config()
    _, variables, _ = _init(cfg, PIDS)
    out = reasoner.save(tmp_path / "model", cfg, variables["params"])
    tensors = load_file(str(out / "params.safetensors"))
    tensors["im_encoder/0_kernel"] = tensors["im_encoder/0_kernel"][:5]
    save_file(tensors, str(out / "params.safetensors"))
    with pytest.raises(ValueError, match=r"tensor 'im_encoder/0_kernel' is float32\[5, "):
        reasoner.load(out)
    del tensors["im_encoder/0_kernel"]
    save_file(tensors, str(out / "params.safetensors"))
    with pytest.raises(ValueError, match=r"no tensor 'im_encoder/0_kernel'"):
        reasoner.load(out)
    (out / "params.safetensors").write_text("not tensors")
    with pytest.raises(ValueError, match=r"params.safetensors is not a readable safetensors file"):
        reasoner.load(out)
    (out / "params.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"has config.json but no params.safetensors"):
        reasoner.load(out)
