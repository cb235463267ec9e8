"""Reference (published PyTorch SMARTER, and the SMART baseline) checkpoints <-> the Flax head's parameters.

The mapping is a rename table over numpy arrays (PyTorch Linear weights are (out, in), ours (in, out);
GRU weights stack the gates r, z, n along the first axis), so it needs no torch. Reading a `.pth`
file does, and torch is imported lazily for that alone.

    python -m smartvlm_jax.convert reference --ckpt ckpt_fused_dinov2_siglip_siglip_0.pth \
        --puzzles all --out DIR

writes a model dir (reasoner.save, reference_quirks on) that reasoner.load accepts. The checkpoint's
key set must match the head exactly: a missing, unexpected or wrongly shaped key is an error naming
it. Parameters that exist in the reference but take no part in its forward pass (q_MLP next to a QF
layer, the dummy index-0 encoder and decoder) are checked for presence and ignored; o_encoder is ignored.

A checkpoint of the SMART baseline (``run_baseline``: ResNet-50 + BERT, recognised by its ``q_lstm`` GRU)
converts the same way into the baseline head (reasoner/baseline.py, ``variant="resnet"``), through the
rename table of ``convert/baseline_table.py``.
"""

from __future__ import annotations

import pathlib
import pickle
import re
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np

from smartvlm_jax import cli, fileio, puzzles, variants
from smartvlm_jax.convert import baseline_table
from smartvlm_jax.reasoner import checkpoint
from smartvlm_jax.reasoner import config as config_lib
from smartvlm_jax.reasoner.model import build


class ConversionError(ValueError):
    """A checkpoint does not fit the head; the message names the offending key."""


def _decoder_index(cfg: ml_collections.ConfigDict) -> dict[int, int]:
    """Puzzle id -> index k of ans_decoder.<k> (1 + rank among the run's sorted ids)."""
    return {int(p): i + 1 for i, p in enumerate(sorted(int(x) for x in cfg.puzzle_ids))}


def is_baseline(state_dict: Mapping) -> bool:
    """Whether reference weights are the SMART baseline's (its BERT-states GRU ``q_lstm``), not SMARTER's."""
    return "q_lstm.weight_ih_l0" in state_dict


def _dummies(cfg: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """The reference's unused index-0 Linear(R, 1) decoder and (per-puzzle encoders) encoder, as zeros."""
    r = cfg.repr_size
    out = {
        "ans_decoder.0.0.weight": np.zeros((1, r), np.float32),
        "ans_decoder.0.0.bias": np.zeros(1, np.float32),
    }
    if not cfg.use_single_image_head:
        out.update(
            {
                "im_encoder.0.0.weight": np.zeros((1, r), np.float32),
                "im_encoder.0.0.bias": np.zeros(1, np.float32),
            }
        )
    return out


def _linear(prefix: str, node: Mapping) -> dict[str, np.ndarray]:
    return {f"{prefix}.weight": np.asarray(node["kernel"]).T, f"{prefix}.bias": np.asarray(node["bias"])}


def _layer_norm(prefix: str, node: Mapping) -> dict[str, np.ndarray]:
    return {f"{prefix}.weight": np.asarray(node["scale"]), f"{prefix}.bias": np.asarray(node["bias"])}


def reference_from_params(params: Mapping, cfg: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """Reference-named arrays of every parameter of the head (dead weights included, dummies as zeros).

    The reference's unused `o_encoder` (and `q_MLP` next to a QF layer) have no counterpart here and
    are left out.
    """
    if cfg.get("head", "smarter") == "baseline":
        out = {**baseline_table.state_from_params(params, cfg), **_dummies(cfg)}
        return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}
    tab = config_lib.tables(cfg)
    r = cfg.repr_size
    out: dict[str, np.ndarray] = {}
    enc = params["im_encoder"]
    if cfg.use_single_image_head:
        out["im_encoder.0.weight"] = np.asarray(enc["0_kernel"][0]).T
        out["im_encoder.0.bias"] = np.asarray(enc["0_bias"][0])
        out["im_encoder.2.weight"] = np.asarray(enc["2_kernel"][0]).T
        out["im_encoder.2.bias"] = np.asarray(enc["2_bias"][0])
    else:
        out["im_encoder.0.0.weight"] = np.zeros((1, r), np.float32)
        out["im_encoder.0.0.bias"] = np.zeros((1,), np.float32)
        for p in puzzles.ALL_PUZZLE_IDS:
            out[f"im_encoder.{p}.0.weight"] = np.asarray(enc["0_kernel"][p]).T
            out[f"im_encoder.{p}.0.bias"] = np.asarray(enc["0_bias"][p])
            out[f"im_encoder.{p}.2.weight"] = np.asarray(enc["2_kernel"][p]).T
            out[f"im_encoder.{p}.2.bias"] = np.asarray(enc["2_bias"][p])
    if cfg.use_qf:
        qf = params["qf"]
        for att in ("mha", "crossattention"):
            for lin in ("query", "key", "value"):
                out.update(_linear(f"qf.{att}.{lin}", qf[att][lin]))
            if cfg.reference_quirks:
                out[f"qf.{att}.distance_embedding.weight"] = np.asarray(qf[att]["distance_embedding"])
        inter = qf["intermediate"]
        out.update(_linear("qf.intermediate.dense", inter["dense"]))
        out.update(_linear("qf.intermediate.dense_final", inter["dense_final"]))
        out.update(_layer_norm("qf.intermediate.layer_norm", inter["layer_norm"]))
    else:
        out.update(_linear("q_MLP.0", params["q_MLP"]["0"]))
        out.update(_linear("q_MLP.2", params["q_MLP"]["2"]))
    out.update(_layer_norm("c.ln", params["c"]["ln"]))
    out.update(_linear("qv_fusion.ln1", params["qv_fusion"]["ln1"]))
    out.update(_linear("qv_fusion.ln2", params["qv_fusion"]["ln2"]))
    out.update(_layer_norm("qv_fusion.layer_norm", params["qv_fusion"]["layer_norm"]))
    out["ans_decoder.0.0.weight"] = np.zeros((1, r), np.float32)
    out["ans_decoder.0.0.bias"] = np.zeros((1,), np.float32)
    index = _decoder_index(cfg)
    for slot, (p, c) in enumerate(zip(tab.ordinary_ids, tab.ordinary_classes, strict=True)):
        dec, k = params["ans_decoder_mlp"], index[p]
        for name in ("ln1", "ln2", "ln3"):
            width = c if name == "ln3" else r
            out[f"ans_decoder.{k}.{name}.weight"] = np.asarray(dec[f"{name}_kernel"][slot][:, :width]).T
            out[f"ans_decoder.{k}.{name}.bias"] = np.asarray(dec[f"{name}_bias"][slot][:width])
    for slot, (p, c) in enumerate(zip(tab.sequence_ids, tab.sequence_classes, strict=True)):
        gru, k = params["ans_decoder_gru"], index[p]
        w_ih = np.asarray(gru["weight_ih"][slot])[:, :, :c]  # [3, R, C]
        w_hh = np.asarray(gru["weight_hh"][slot])[:, :c, :c]  # [3, C, C]
        out[f"ans_decoder.{k}.weight_ih_l0"] = np.concatenate([w.T for w in w_ih])
        out[f"ans_decoder.{k}.weight_hh_l0"] = np.concatenate([w.T for w in w_hh])
        out[f"ans_decoder.{k}.bias_ih_l0"] = np.asarray(gru["bias_ih"][slot])[:, :c].reshape(-1)
        out[f"ans_decoder.{k}.bias_hh_l0"] = np.asarray(gru["bias_hh"][slot])[:, :c].reshape(-1)
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def _ignorable(key: str, cfg: ml_collections.ConfigDict) -> bool:
    """Reference parameters with no role in the forward pass of this variant."""
    if key.startswith("o_encoder."):
        return True
    if cfg.use_qf and key.startswith("q_MLP."):
        return True
    return bool(not cfg.reference_quirks and re.fullmatch(r"qf\.\w+\.distance_embedding\.weight", key))


def _template(cfg: ml_collections.ConfigDict):
    model = build(cfg)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *checkpoint.example_inputs(cfg)))
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes["params"])


def params_from_reference(state_dict: Mapping[str, np.ndarray], cfg: ml_collections.ConfigDict) -> dict:
    """The head's params tree from reference-named arrays; strict about names and shapes (ConversionError
    naming the first key at fault)."""
    config_lib.validate(cfg)
    params = _template(cfg)
    expected = reference_from_params(params, cfg)  # names and shapes, from zero params
    sd = {k: np.asarray(v, np.float32) for k, v in state_dict.items()}
    _check_keys(sd, expected, cfg)
    if cfg.get("head", "smarter") == "baseline":
        converted = baseline_table.params_from_state(sd, cfg)
        if jax.tree.map(np.shape, converted) != jax.tree.map(np.shape, params):  # the table and module agree
            raise ConversionError("the baseline rename table does not give the head's parameter shapes")
        return converted
    _fill_image_encoders(params["im_encoder"], sd, cfg)
    if cfg.use_qf:
        _fill_qf(params["qf"], sd, cfg)
    else:
        params["q_MLP"] = {"0": _from_linear(sd, "q_MLP.0"), "2": _from_linear(sd, "q_MLP.2")}
    params["c"] = {"ln": _from_layer_norm(sd, "c.ln")}
    params["qv_fusion"] = {
        "ln1": _from_linear(sd, "qv_fusion.ln1"),
        "ln2": _from_linear(sd, "qv_fusion.ln2"),
        "layer_norm": _from_layer_norm(sd, "qv_fusion.layer_norm"),
    }
    _fill_answer_decoders(params, sd, cfg)
    return params


def _check_keys(
    sd: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray], cfg: ml_collections.ConfigDict
) -> None:
    """ConversionError naming the first missing key, unexpected key (beyond :func:`_ignorable`) or key of
    the wrong shape."""
    missing = sorted(set(expected) - set(sd))
    if missing:
        raise ConversionError(f"missing key {missing[0]} ({len(missing)} missing in all)")
    unexpected = sorted(k for k in set(sd) - set(expected) if not _ignorable(k, cfg))
    if unexpected:
        raise ConversionError(f"unexpected key {unexpected[0]} ({len(unexpected)} unexpected in all)")
    for k, v in expected.items():
        if sd[k].shape != v.shape:
            raise ConversionError(f"wrong shape for key {k}: {sd[k].shape}, expected {v.shape}")


def _from_linear(sd: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """A PyTorch Linear (weight [out, in]) as a Dense (kernel [in, out]); the inverse of :func:`_linear`."""
    return {"kernel": sd[f"{prefix}.weight"].T.copy(), "bias": sd[f"{prefix}.bias"].copy()}


def _from_layer_norm(sd: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {"scale": sd[f"{prefix}.weight"].copy(), "bias": sd[f"{prefix}.bias"].copy()}


def _fill_image_encoders(enc: dict, sd: Mapping[str, np.ndarray], cfg: ml_collections.ConfigDict) -> None:
    """The image encoder's rows (one shared, or one per puzzle) in place."""
    ids = [0] if cfg.use_single_image_head else list(puzzles.ALL_PUZZLE_IDS)
    for p in ids:
        pre = "im_encoder" if cfg.use_single_image_head else f"im_encoder.{p}"
        enc["0_kernel"][p] = sd[f"{pre}.0.weight"].T
        enc["0_bias"][p] = sd[f"{pre}.0.bias"]
        enc["2_kernel"][p] = sd[f"{pre}.2.weight"].T
        enc["2_bias"][p] = sd[f"{pre}.2.bias"]


def _fill_qf(qf: dict, sd: Mapping[str, np.ndarray], cfg: ml_collections.ConfigDict) -> None:
    """The QF layer's attentions and intermediate block in place."""
    for att in ("mha", "crossattention"):
        for name in ("query", "key", "value"):
            qf[att][name] = _from_linear(sd, f"qf.{att}.{name}")
        if cfg.reference_quirks:
            qf[att]["distance_embedding"] = sd[f"qf.{att}.distance_embedding.weight"].copy()
    qf["intermediate"] = {
        "dense": _from_linear(sd, "qf.intermediate.dense"),
        "dense_final": _from_linear(sd, "qf.intermediate.dense_final"),
        "layer_norm": _from_layer_norm(sd, "qf.intermediate.layer_norm"),
    }


def _fill_answer_decoders(params: dict, sd: Mapping[str, np.ndarray], cfg: ml_collections.ConfigDict) -> None:
    """The stacked answer decoders in place: each puzzle's MLP or GRU into its slot, zero-padded from its
    C_p classes to the stack's width."""
    tab = config_lib.tables(cfg)
    r = cfg.repr_size
    index = _decoder_index(cfg)
    for slot, (p, c) in enumerate(zip(tab.ordinary_ids, tab.ordinary_classes, strict=True)):
        dec, k = params["ans_decoder_mlp"], index[p]
        for name in ("ln1", "ln2", "ln3"):
            width = c if name == "ln3" else r
            dec[f"{name}_kernel"][slot][:, :width] = sd[f"ans_decoder.{k}.{name}.weight"].T
            dec[f"{name}_bias"][slot][:width] = sd[f"ans_decoder.{k}.{name}.bias"]
    for slot, (p, c) in enumerate(zip(tab.sequence_ids, tab.sequence_classes, strict=True)):
        gru, k = params["ans_decoder_gru"], index[p]
        w_ih = sd[f"ans_decoder.{k}.weight_ih_l0"].reshape(3, c, r)
        w_hh = sd[f"ans_decoder.{k}.weight_hh_l0"].reshape(3, c, c)
        for g in range(3):
            gru["weight_ih"][slot, g, :, :c] = w_ih[g].T
            gru["weight_hh"][slot, g, :c, :c] = w_hh[g].T
        gru["bias_ih"][slot, :, :c] = sd[f"ans_decoder.{k}.bias_ih_l0"].reshape(3, c)
        gru["bias_hh"][slot, :, :c] = sd[f"ans_decoder.{k}.bias_hh_l0"].reshape(3, c)


def config_from_reference(
    state_dict: Mapping[str, np.ndarray], puzzle_ids: list[int], variant: str | None = None
) -> ml_collections.ConfigDict:
    """Infer the head's config (quirks on) from weight shapes: sizes, variant and each C_p."""
    shapes = {k: tuple(np.shape(v)) for k, v in state_dict.items()}

    def need(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise ConversionError(f"missing key {key}")
        return shapes[key]

    if is_baseline(state_dict):
        return _baseline_config(shapes, need, puzzle_ids, variant)
    cfg = config_lib.default_config()
    cfg.reference_quirks = True
    cfg.use_single_image_head = "im_encoder.0.weight" in shapes
    first = "im_encoder.0.weight" if cfg.use_single_image_head else "im_encoder.1.0.weight"
    cfg.repr_size, vision_dim = need(first)
    if variant is None:
        matches = [f for f in variants.for_head("smarter") if variants.get(f).vision_dim == vision_dim]
        if len(matches) != 1:
            raise ConversionError(f"{first} has input width {vision_dim}: pass --variant {'|'.join(matches)}")
        variant = matches[0]
    cfg.variant = variant
    cfg.use_qf = "qf.intermediate.dense.weight" in shapes
    if cfg.use_qf:
        cfg.h_sz, cfg.text_dim = need("qf.intermediate.dense.weight")
        rows, head = need("qf.mha.distance_embedding.weight")
        cfg.num_heads = cfg.text_dim // head
        cfg.max_qlen = (rows + 1) // 2
    else:
        cfg.h_sz, cfg.text_dim = need("q_MLP.0.weight")
    cfg.puzzle_ids, cfg.num_classes = _decoder_classes(shapes, puzzle_ids, "ln3", "GRU")
    config_lib.validate(cfg)
    return cfg


def _decoder_classes(
    shapes: Mapping[str, tuple[int, ...]], puzzle_ids: list[int], last_linear: str, rnn: str
) -> tuple[list[int], list[int]]:
    """(sorted ids, C_p of each) from the decoders: the MLP's last Linear (C_p, R), the RNN's (G C_p, C_p)."""
    ids = sorted(int(p) for p in puzzle_ids)
    classes = []
    for k, p in enumerate(ids, start=1):
        mlp_key, rnn_key = f"ans_decoder.{k}.{last_linear}.weight", f"ans_decoder.{k}.weight_hh_l0"
        if puzzles.is_sequence(p):
            if rnn_key not in shapes:
                raise ConversionError(f"missing key {rnn_key} ({rnn} decoder of sequence puzzle {p})")
            classes.append(int(shapes[rnn_key][1]))
        else:
            if mlp_key not in shapes:
                raise ConversionError(f"missing key {mlp_key} (MLP decoder of puzzle {p})")
            classes.append(int(shapes[mlp_key][0]))
    extra = f"ans_decoder.{len(ids) + 1}."
    if any(k.startswith(extra) for k in shapes):
        raise ConversionError(f"unexpected key {extra}*: the checkpoint has more decoders than --puzzles")
    return ids, classes


def _baseline_config(shapes, need, puzzle_ids: list[int], variant: str | None) -> ml_collections.ConfigDict:
    """The baseline head's config (quirks on) from SMART baseline weights: R, H, widths and each C_p.

    The question length L is not in the weights (the GRU runs over any length); it stays BERT's 110.
    """
    if variant not in (None, "resnet"):
        raise ConversionError(
            f"--variant {variant}: a SMART baseline checkpoint (q_lstm) takes ResNet-50 features (resnet)"
        )
    cfg = config_lib.baseline_config()
    cfg.reference_quirks = True
    cfg.use_single_image_head = "im_encoder.0.weight" in shapes
    first = "im_encoder.0.weight" if cfg.use_single_image_head else "im_encoder.1.0.weight"
    cfg.repr_size, cfg.vision_dim = need(first)
    gates, cfg.text_dim = need("q_lstm.weight_ih_l0")  # [3H, D]: gates r, z, n
    cfg.h_sz = gates // 3
    cfg.puzzle_ids, cfg.num_classes = _decoder_classes(shapes, puzzle_ids, "4", "LSTM")
    config_lib.validate(cfg)
    return cfg


def read_checkpoint(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """The "net" state_dict of a reference .pth as numpy arrays (needs torch, imported here only)."""
    try:
        import torch
    except ImportError as e:  # the runtime install has no torch; reading .pth files needs it
        raise ConversionError(
            "reading a .pth checkpoint needs PyTorch: pip install -r requirements-dev.txt"
        ) from e
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as e:  # not a torch.save file, or truncated
        raise ConversionError(f"{path} is not a PyTorch checkpoint (torch.load: {e})") from None
    net = ckpt.get("net") if isinstance(ckpt, dict) else None
    if not isinstance(net, Mapping):
        raise ConversionError(f"{path}: expected a dict with a 'net' state_dict")
    return {k: v.detach().float().numpy() for k, v in net.items()}


def convert(
    state_dict: Mapping[str, np.ndarray], puzzle_ids: list[int], out_dir: str | pathlib.Path, variant=None
) -> pathlib.Path:
    """Convert reference arrays to a model dir; writes nothing unless the whole conversion succeeds."""
    cfg = config_from_reference(state_dict, puzzle_ids, variant)
    params = params_from_reference(state_dict, cfg)
    out = pathlib.Path(out_dir).absolute()
    if out.exists() and any(out.iterdir()):
        raise ConversionError(f"--out {out} exists and is not empty")
    with fileio.staged_dir(out) as staging:
        checkpoint.save(staging, cfg, params)
    return out


def _parse_puzzles(text: str) -> list[int]:
    if text == "all":
        return list(puzzles.ALL_PUZZLE_IDS)
    try:
        return sorted(int(t) for t in text.split(",") if t)
    except ValueError as e:
        raise ConversionError(f"--puzzles: expected 'all' or ID,ID,..., got {text!r}") from e


def main(argv: list[str]) -> int:
    """CLI: `reference --ckpt X.pth --puzzles all|ID,ID --out DIR [--variant fused|dinov2|siglip|resnet]`
    (``--features``: the older name of ``--variant``)."""
    parser = cli.ArgumentParser(prog=cli.prog("smartvlm_jax.convert") + " reference", description=__doc__)
    parser.add_argument("--ckpt", required=True, help="reference checkpoint {'net': state_dict, ...}")
    parser.add_argument("--puzzles", required=True, help="'all' or the run's puzzle ids, comma separated")
    parser.add_argument("--out", required=True, help="model dir to write (must not exist or be empty)")
    parser.add_argument("--variant", "--features", choices=sorted(variants.VARIANTS), default=None)
    parser.add_argument("--traceback", action="store_true", help=cli.TRACEBACK_HELP)
    args = parser.parse_args(argv)

    def run() -> None:
        out = convert(read_checkpoint(args.ckpt), _parse_puzzles(args.puzzles), args.out, args.variant)
        _, variables, _ = checkpoint.load(out)
        print(f"wrote {out}\n{checkpoint.param_summary(variables)}")

    return cli.run(run, args.traceback)  # ConversionError is a ValueError
