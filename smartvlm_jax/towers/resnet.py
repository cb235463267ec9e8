"""ResNet vision tower (ResNet-50 of the SMART baseline; any bottleneck/basic ResNet an HF config describes).

Output of :func:`forward`: the last stage's feature map flattened to tokens, ``[B, h * w, C]`` (7 x 7 x 2048
for ResNet-50 at 224 px). Its mean over the tokens is the global average pool, i.e. HF ``pooler_output`` and
the 2048-d feature torchvision's ``resnet50`` feeds its ``fc`` (what the SMART baseline uses), so the
trainer's "mean over all tokens" feature path works unchanged. Batch norm is in inference mode (running
statistics), as a frozen tower is.

Weights mirror transformers' ``ResNetModel`` names; :func:`torchvision_key` maps the torchvision
``resnet50().state_dict()`` names (``conv1.weight``, ``layer1.0.downsample.0.weight``, ...) onto them, so
both layouts convert through the same table.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from smartvlm_jax.towers.params import ParamSpec, Specs

# transformers.ResNetConfig values of microsoft/resnet-50 (also the ResNetConfig defaults).
DEFAULTS: dict[str, Any] = {
    "model_type": "resnet",
    "num_channels": 3,
    "embedding_size": 64,
    "hidden_sizes": [256, 512, 1024, 2048],
    "depths": [3, 4, 6, 3],
    "layer_type": "bottleneck",
    "hidden_act": "relu",
    "downsample_in_first_stage": False,
    "downsample_in_bottleneck": False,
}
BN_EPS = 1e-5  # PyTorch BatchNorm2d default, used by both transformers and torchvision
REDUCTION = 4  # bottleneck width = out_channels / 4
F32 = jnp.float32


def _conv_bn_specs(prefix: str, k: int, cin: int, cout: int) -> Specs:
    """A ResNetConvLayer: bias-free conv (kernel [k, k, cin, cout]) + BatchNorm2d (with running stats)."""
    return {
        f"{prefix}.convolution.kernel": ParamSpec((k, k, cin, cout), f"{prefix}.convolution.weight", "conv"),
        f"{prefix}.normalization.scale": ParamSpec((cout,), f"{prefix}.normalization.weight", init="ones"),
        f"{prefix}.normalization.bias": ParamSpec((cout,), f"{prefix}.normalization.bias", init="zeros"),
        f"{prefix}.normalization.running_mean": ParamSpec(
            (cout,), f"{prefix}.normalization.running_mean", init="zeros"
        ),
        f"{prefix}.normalization.running_var": ParamSpec(
            (cout,), f"{prefix}.normalization.running_var", init="ones"
        ),
    }


def _stages(config: dict[str, Any]):
    """Yields (stage, layer, cin, cout, stride, has_shortcut) for every residual layer of the config."""
    if config["layer_type"] not in ("bottleneck", "basic"):
        raise ValueError(f"resnet config: unsupported layer_type {config['layer_type']!r}")
    cin = config["embedding_size"]
    for s, (cout, depth) in enumerate(zip(config["hidden_sizes"], config["depths"], strict=True)):
        stride = 2 if s > 0 or config["downsample_in_first_stage"] else 1
        for i in range(depth):
            layer_in, layer_stride = (cin, stride) if i == 0 else (cout, 1)
            yield s, i, layer_in, cout, layer_stride, layer_in != cout or layer_stride != 1
        cin = cout


def param_specs(config: dict[str, Any]) -> Specs:
    """The weight table of a ``ResNetModel`` (HF keys without the ``resnet.`` prefix)."""
    emb = config["embedding_size"]
    specs = _conv_bn_specs("embedder.embedder", 7, config["num_channels"], emb)
    bottleneck = config["layer_type"] == "bottleneck"
    for s, i, cin, cout, _, shortcut in _stages(config):
        p = f"encoder.stages.{s}.layers.{i}"
        if shortcut:
            specs.update(_conv_bn_specs(f"{p}.shortcut", 1, cin, cout))
        if bottleneck:
            mid = cout // REDUCTION
            specs.update(_conv_bn_specs(f"{p}.layer.0", 1, cin, mid))
            specs.update(_conv_bn_specs(f"{p}.layer.1", 3, mid, mid))
            specs.update(_conv_bn_specs(f"{p}.layer.2", 1, mid, cout))
        else:
            specs.update(_conv_bn_specs(f"{p}.layer.0", 3, cin, cout))
            specs.update(_conv_bn_specs(f"{p}.layer.1", 3, cout, cout))
    return specs


def _conv_bn(p: dict[str, Any], x: jax.Array, stride: int, dtype: Any, relu: bool) -> jax.Array:
    """conv (padding k // 2, as HF's ResNetConvLayer and torchvision) -> inference BatchNorm -> ReLU?"""
    kernel = p["convolution"]["kernel"]
    k = kernel.shape[0]
    y = lax.conv_general_dilated(
        x.astype(kernel.dtype),
        kernel,
        window_strides=(stride, stride),
        padding=((k // 2, k // 2), (k // 2, k // 2)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        preferred_element_type=F32,
    )
    bn = p["normalization"]
    scale = bn["scale"].astype(F32) * lax.rsqrt(bn["running_var"].astype(F32) + BN_EPS)
    y = y * scale + (bn["bias"].astype(F32) - bn["running_mean"].astype(F32) * scale)
    return jax.nn.relu(y) if relu else y


def _max_pool(x: jax.Array) -> jax.Array:
    """MaxPool2d(kernel 3, stride 2, padding 1): padding never wins the max (-inf)."""
    return lax.reduce_window(
        x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    )


def forward(params: dict[str, Any], pixels: jax.Array, config: dict[str, Any], dtype: Any) -> jax.Array:
    """NHWC pixels [B, S, S, C] -> last stage's features as tokens [B, h * w, C_last] (float32)."""
    if config["hidden_act"] != "relu":
        raise ValueError(f"resnet config: unsupported hidden_act {config['hidden_act']!r} (only relu)")
    x = _conv_bn(params["embedder"]["embedder"], pixels, 2, dtype, relu=True)
    x = _max_pool(x)
    stages = params["encoder"]["stages"]
    bottleneck = config["layer_type"] == "bottleneck"
    in_bottleneck = config["downsample_in_bottleneck"]
    for s, i, _, _, stride, shortcut in _stages(config):
        p = stages[str(s)]["layers"][str(i)]
        residual = _conv_bn(p["shortcut"], x, stride, dtype, relu=False) if shortcut else x
        layer = p["layer"]
        if bottleneck:
            # downsample_in_bottleneck: stride on the first 1x1 conv (v1); otherwise on the 3x3 (v1.5).
            h = _conv_bn(layer["0"], x, stride if in_bottleneck else 1, dtype, relu=True)
            h = _conv_bn(layer["1"], h, 1 if in_bottleneck else stride, dtype, relu=True)
            h = _conv_bn(layer["2"], h, 1, dtype, relu=False)
        else:
            h = _conv_bn(layer["0"], x, stride, dtype, relu=True)
            h = _conv_bn(layer["1"], h, 1, dtype, relu=False)
        x = jax.nn.relu(h + residual)
    b, h, w, c = x.shape
    return x.reshape(b, h * w, c)


def pooled(params: dict[str, Any], hidden: jax.Array, config: dict[str, Any], dtype: Any) -> jax.Array:
    """HF ``pooler_output`` (squeezed): the global average pool of the last feature map -> [B, C_last]."""
    del params, config, dtype
    return jnp.mean(hidden, axis=1)


# torchvision resnet names -> transformers ResNetModel names. BatchNorm fields keep their names.
_TV_STEM = re.compile(r"^(conv1|bn1)\.")
_TV_CONV = re.compile(r"^layer(\d+)\.(\d+)\.(conv|bn)(\d+)\.")
_TV_DOWNSAMPLE = re.compile(r"^layer(\d+)\.(\d+)\.downsample\.([01])\.")
TORCHVISION_IGNORED = ("fc.weight", "fc.bias")  # the ImageNet classifier, not part of the tower


def torchvision_key(key: str) -> str:
    """One torchvision ``resnet*`` state-dict key in transformers' ``ResNetModel`` naming (others unchanged).

    ``conv1``/``bn1`` -> ``embedder.embedder.convolution``/``normalization``; ``layerS.I.convJ``/``bnJ`` ->
    ``encoder.stages.{S-1}.layers.I.layer.{J-1}``; ``layerS.I.downsample.0``/``.1`` -> ``...shortcut``.
    """
    part = {"conv": "convolution", "bn": "normalization", "0": "convolution", "1": "normalization"}
    if m := _TV_STEM.match(key):
        return f"embedder.embedder.{part[m.group(1)[:-1]]}." + key[m.end() :]
    if m := _TV_CONV.match(key):
        s, i, kind, j = m.groups()
        return f"encoder.stages.{int(s) - 1}.layers.{i}.layer.{int(j) - 1}.{part[kind]}." + key[m.end() :]
    if m := _TV_DOWNSAMPLE.match(key):
        s, i, j = m.groups()
        return f"encoder.stages.{int(s) - 1}.layers.{i}.shortcut.{part[j]}." + key[m.end() :]
    return key
