"""Parameter tables of the towers: expected names, shapes, HF source keys, random init, dtype casting.

Each tower module describes its weights as a flat table ``{our_key: ParamSpec}``. The same table drives
strict loading (every missing/unexpected key and wrong shape is reported), conversion from HF tensors
(``hf_key`` + ``layout``), and random initialisation without torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

# How an HF tensor becomes ours: "raw" (as is), "linear" (PyTorch (out, in) -> (in, out)),
# "conv" ((out, in, kh, kw) -> (kh, kw, in, out)).
LAYOUTS = ("raw", "linear", "conv")


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One expected weight: its shape in our layout, its HF key, how to convert it and how to init it."""

    shape: tuple[int, ...]
    hf_key: str
    layout: str = "raw"
    init: str = "normal"  # "normal" | "zeros" | "ones" | "const"
    value: float = 0.0  # for init == "const" (DINOv2 layer scale)

    def from_hf(self, array: np.ndarray) -> np.ndarray:
        """Converts an HF tensor (numpy) to our layout, as float32."""
        a = np.asarray(array, dtype=np.float32)
        if self.layout == "linear" and a.ndim == 2:
            return a.T
        if self.layout == "conv" and a.ndim == 4:
            return a.transpose(2, 3, 1, 0)
        return a

    def hf_shape(self) -> tuple[int, ...]:
        """The shape the HF checkpoint stores for this weight."""
        if self.layout == "linear":
            return tuple(reversed(self.shape))
        if self.layout == "conv":
            kh, kw, cin, cout = self.shape
            return (cout, cin, kh, kw)
        return self.shape


Specs = dict[str, ParamSpec]


def linear_specs(prefix: str, hf_prefix: str, d_in: int, d_out: int, bias: bool = True) -> Specs:
    """Specs of a PyTorch ``nn.Linear`` at ``hf_prefix`` stored as ``prefix.kernel`` [in, out] (+ bias)."""
    specs = {f"{prefix}.kernel": ParamSpec((d_in, d_out), f"{hf_prefix}.weight", "linear")}
    if bias:
        specs[f"{prefix}.bias"] = ParamSpec((d_out,), f"{hf_prefix}.bias", init="zeros")
    return specs


def layer_norm_specs(prefix: str, hf_prefix: str, dim: int) -> Specs:
    """Specs of an ``nn.LayerNorm``: ``scale`` (HF ``weight``) and ``bias``."""
    return {
        f"{prefix}.scale": ParamSpec((dim,), f"{hf_prefix}.weight", init="ones"),
        f"{prefix}.bias": ParamSpec((dim,), f"{hf_prefix}.bias", init="zeros"),
    }


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b.c": x}`` -> ``{"a": {"b": {"c": x}}}``."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Inverse of :func:`unflatten`."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def check_tree(specs: Specs, flat: Mapping[str, Any], what: str) -> None:
    """Raises ``ValueError`` listing every missing key, unexpected key and wrong shape of ``flat``."""
    problems = [f"missing key {k} (expected shape {specs[k].shape})" for k in specs if k not in flat]
    problems += [f"unexpected key {k}" for k in flat if k not in specs]
    problems += [
        f"wrong shape for {k}: got {tuple(np.shape(v))}, expected {specs[k].shape}"
        for k, v in flat.items()
        if k in specs and tuple(np.shape(v)) != specs[k].shape
    ]
    if problems:
        raise ValueError(f"{what}: " + "; ".join(problems))


def random_init(specs: Specs, seed: int, std: float) -> dict[str, np.ndarray]:
    """Random float32 weights for a table (normal(0, std) matrices, LayerNorm ones/zeros), flat, no torch."""
    rng = np.random.default_rng(seed)
    flat = {}
    for key in sorted(specs):
        spec = specs[key]
        if spec.init == "zeros":
            flat[key] = np.zeros(spec.shape, np.float32)
        elif spec.init == "ones":
            flat[key] = np.ones(spec.shape, np.float32)
        elif spec.init == "const":
            flat[key] = np.full(spec.shape, spec.value, np.float32)
        else:
            flat[key] = (rng.standard_normal(spec.shape) * std).astype(np.float32)
    return flat


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(dtype: str) -> Any:
    """Maps the public dtype option ("float32" | "bfloat16") to a jnp dtype."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def to_device(flat: Mapping[str, np.ndarray], dtype: str) -> dict[str, Any]:
    """Flat numpy weights -> nested jnp tree; with bfloat16, the matmul kernels become bf16.

    Everything else (biases, LayerNorm, layer scale, position/token embeddings, CLS) stays float32: it is
    small and is added to the float32 residual stream.
    """
    target = compute_dtype(dtype)
    out = {}
    for key, value in flat.items():
        arr = jnp.asarray(value, jnp.float32)
        out[key] = arr.astype(target) if key.endswith(".kernel") else arr
    return unflatten(out)
