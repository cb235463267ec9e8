"""The SMART baseline head's rename table: reference (``SMART_Net``) state_dict names <-> the JAX params.

Reference names: ``im_encoder.<pid>.{0,2}`` (per-puzzle; ``im_encoder.{0,2}`` for the single head),
``q_lstm.{weight,bias}_{ih,hh}_l0[_reverse]``, ``q_MLP``, ``qv_fusion.{0,2}``, ``ans_decoder.<k>.{0,2,4}``
(MLP) or ``ans_decoder.<k>.{weight,bias}_{ih,hh}_l0`` (LSTM, gates i, f, g, o), k = 1 + rank of the puzzle
id. Numpy only, so the checkpoint converter (``convert/reference.py``) and the PyTorch port of the tests
and benchmarks (``tests/torch_port/baseline.py``, not installed) share it without either needing the other.
The reference's index-0 dummies and ``o_encoder`` have no counterpart here.
"""

from __future__ import annotations

from collections.abc import Mapping

import ml_collections
import numpy as np

from smartvlm_jax.reasoner import config as config_lib

Array = np.ndarray


def _linear(sd: Mapping[str, Array], key: str) -> tuple[Array, Array]:
    return np.asarray(sd[f"{key}.weight"]).T, np.asarray(sd[f"{key}.bias"])


def params_from_state(sd: Mapping[str, Array], cfg: ml_collections.ConfigDict) -> dict:
    """The JAX baseline head's params from reference-named weights (numpy); stacks padded with zeros."""
    tab = config_lib.tables(cfg)
    r, vdim = cfg.repr_size, config_lib.vision_dim(cfg)
    p: dict = {}
    if cfg.use_single_image_head:
        k0, b0 = _linear(sd, "im_encoder.0")
        k2, b2 = _linear(sd, "im_encoder.2")
        p["im_encoder"] = {"0_kernel": k0[None], "0_bias": b0[None], "2_kernel": k2[None], "2_bias": b2[None]}
    else:
        n = config_lib.NUM_ENCODER_SLOTS
        enc = {
            "0_kernel": np.zeros((n, vdim, r)),
            "0_bias": np.zeros((n, r)),
            "2_kernel": np.zeros((n, r, r)),
            "2_bias": np.zeros((n, r)),
        }
        for pid in range(1, n):
            for layer in ("0", "2"):
                enc[f"{layer}_kernel"][pid], enc[f"{layer}_bias"][pid] = _linear(
                    sd, f"im_encoder.{pid}.{layer}"
                )
        p["im_encoder"] = enc
    p["q_lstm"] = {
        f"{w}_l0{s}": np.asarray(sd[f"q_lstm.{w}_l0{s}"])
        for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        for s in ("", "_reverse")
    }
    for ours, ref in (("q_MLP", "q_MLP"), ("qv_fusion_0", "qv_fusion.0"), ("qv_fusion_2", "qv_fusion.2")):
        k, b = _linear(sd, ref)
        p[ours] = {"kernel": k, "bias": b}
    slot = {pid: 1 + i for i, pid in enumerate(sorted(int(x) for x in cfg.puzzle_ids))}
    if tab.ordinary_ids:
        g, c_o = len(tab.ordinary_ids), tab.max_ordinary_classes
        widths = {"0": r, "2": r, "4": c_o}
        dec = {
            f"{name}_{kind}": np.zeros((g, r, w) if kind == "kernel" else (g, w))
            for name, w in widths.items()
            for kind in ("kernel", "bias")
        }
        for row, pid in enumerate(tab.ordinary_ids):
            for layer in ("0", "2", "4"):
                k, b = _linear(sd, f"ans_decoder.{slot[pid]}.{layer}")
                dec[f"{layer}_kernel"][row, :, : k.shape[1]] = k
                dec[f"{layer}_bias"][row, : b.shape[0]] = b
        p["ans_decoder_mlp"] = dec
    if tab.sequence_ids:
        n, c_s = len(tab.sequence_ids), tab.max_sequence_classes
        lstm = {
            "weight_ih": np.zeros((n, 4, r, c_s)),
            "weight_hh": np.zeros((n, 4, c_s, c_s)),
            "bias_ih": np.zeros((n, 4, c_s)),
            "bias_hh": np.zeros((n, 4, c_s)),
        }
        for row, (pid, c) in enumerate(zip(tab.sequence_ids, tab.sequence_classes, strict=True)):
            pre = f"ans_decoder.{slot[pid]}"
            w_ih = np.asarray(sd[f"{pre}.weight_ih_l0"]).reshape(4, c, r)  # gates i, f, g, o
            w_hh = np.asarray(sd[f"{pre}.weight_hh_l0"]).reshape(4, c, c)
            lstm["weight_ih"][row, :, :, :c] = w_ih.transpose(0, 2, 1)
            lstm["weight_hh"][row, :, :c, :c] = w_hh.transpose(0, 2, 1)
            lstm["bias_ih"][row, :, :c] = np.asarray(sd[f"{pre}.bias_ih_l0"]).reshape(4, c)
            lstm["bias_hh"][row, :, :c] = np.asarray(sd[f"{pre}.bias_hh_l0"]).reshape(4, c)
        p["ans_decoder_lstm"] = lstm
    return _f32(p)


def _f32(tree):
    if isinstance(tree, dict):
        return {k: _f32(v) for k, v in tree.items()}
    return np.asarray(tree, np.float32)


def state_from_params(params: Mapping, cfg: ml_collections.ConfigDict) -> dict[str, Array]:
    """Reference-named weights (numpy) of the JAX baseline head's params; inverse of params_from_state."""
    params = params.get("params", params)
    tab = config_lib.tables(cfg)
    np_ = lambda x: np.asarray(x, np.float32)
    sd: dict[str, Array] = {}
    enc = {k: np_(v) for k, v in params["im_encoder"].items()}
    rows = [0] if cfg.use_single_image_head else range(1, config_lib.NUM_ENCODER_SLOTS)
    for pid in rows:
        pre = "im_encoder" if cfg.use_single_image_head else f"im_encoder.{pid}"
        for layer in ("0", "2"):
            sd[f"{pre}.{layer}.weight"] = enc[f"{layer}_kernel"][pid].T
            sd[f"{pre}.{layer}.bias"] = enc[f"{layer}_bias"][pid]
    sd.update({f"q_lstm.{k}": np_(v) for k, v in params["q_lstm"].items()})
    for ours, ref in (("q_MLP", "q_MLP"), ("qv_fusion_0", "qv_fusion.0"), ("qv_fusion_2", "qv_fusion.2")):
        sd[f"{ref}.weight"], sd[f"{ref}.bias"] = np_(params[ours]["kernel"]).T, np_(params[ours]["bias"])
    slot = {pid: 1 + i for i, pid in enumerate(sorted(int(x) for x in cfg.puzzle_ids))}
    for row, (pid, c) in enumerate(zip(tab.ordinary_ids, tab.ordinary_classes, strict=True)):
        dec = params["ans_decoder_mlp"]
        for layer in ("0", "2", "4"):
            width = c if layer == "4" else cfg.repr_size
            sd[f"ans_decoder.{slot[pid]}.{layer}.weight"] = np_(dec[f"{layer}_kernel"][row])[:, :width].T
            sd[f"ans_decoder.{slot[pid]}.{layer}.bias"] = np_(dec[f"{layer}_bias"][row])[:width]
    for row, (pid, c) in enumerate(zip(tab.sequence_ids, tab.sequence_classes, strict=True)):
        lstm, pre = params["ans_decoder_lstm"], f"ans_decoder.{slot[pid]}"
        sd[f"{pre}.weight_ih_l0"] = (
            np_(lstm["weight_ih"][row])[:, :, :c].transpose(0, 2, 1).reshape(4 * c, -1)
        )
        sd[f"{pre}.weight_hh_l0"] = (
            np_(lstm["weight_hh"][row])[:, :c, :c].transpose(0, 2, 1).reshape(4 * c, c)
        )
        sd[f"{pre}.bias_ih_l0"] = np_(lstm["bias_ih"][row])[:, :c].reshape(4 * c)
        sd[f"{pre}.bias_hh_l0"] = np_(lstm["bias_hh"][row])[:, :c].reshape(4 * c)
    return sd
