"""How the ViT towers' encoders run on this machine: the one seam between the model code and the backends.

The model code (:mod:`~smartvlm_jax.towers.vit`, ``dinov2.py``, ``siglip.py``) states the computation in
plain JAX and runs its encoder's linears, attention, blocks and batch through a :class:`vit.Ops`. This
package picks that, and lays the weights out for it:

- :mod:`.xla`: XLA's dots. CPU: heads-major attention, batches in cache-sized groups, float32 forwards
  compiled with XLA's oneDNN dots; GPU/TPU: ``jax.nn.dot_product_attention`` (cuDNN's flash attention on
  NVIDIA in bf16/fp16), whole batches.
- :mod:`.onednn`: one-device CPU: each encoder block one oneDNN custom call, on weights packed once.

Who calls what: ``Tower`` (registry.py) asks :func:`packs_linears` (lazily: it may build the kernels) and
:func:`compiler_options`; its family's ``prepare`` lays the encoder out with :func:`prepare_layers`; the
tower's forward asks :func:`ops_for` at trace time, from the layers it is given, so ``Tower.apply`` runs
HF-named, fused or packed weights alike.
"""

from __future__ import annotations

from typing import Any

from smartvlm_jax.towers import vit
from smartvlm_jax.towers.backends import onednn, xla

# A tower config key (set by the compile-only path, never saved): the attention formulation of the platform
# the program is compiled for, when that is not this process's default backend (``xla.impl_for``).
IMPL_KEY = "_smartvlm_attention_impl"


def ops_for(layers: vit.Params, impl: str | None = None) -> vit.Ops:
    """The ops for encoder ``layers`` ({"0": block, ...}): the oneDNN kernels where :func:`prepare_layers`
    packed them, else XLA's dots with attention ``impl`` (one of :data:`xla.ATTENTION_IMPLS`, ``ValueError``
    otherwise; None: the platform's, :func:`xla.default_impl`)."""
    if onednn.is_packed(layers):
        return onednn.OnednnOps()
    return xla.XlaOps(impl or xla.default_impl())


def prepare_layers(layers: vit.Params, layout: vit.BlockLayout, width: int, pack: bool) -> dict[str, Any]:
    """Encoder ``layers`` laid out for the forward, once, outside jit: q/k/v fused (:func:`vit.fuse_qkv`,
    every backend) and, with ``pack``, the linears packed for the oneDNN kernels (:func:`onednn.pack_linears`,
    one-device CPU only: see :func:`packs_linears`). ``width`` is the hidden size D."""
    layers = vit.fuse_qkv(layers, layout, width)
    return onednn.pack_linears(layers, layout) if pack else layers


def packs_linears(cpu_onednn: bool = True) -> bool:
    """Whether towers loaded with ``cpu_onednn`` pack their encoders for the oneDNN kernels here: a
    one-device CPU backend where the kernels build (:func:`onednn.usable`; the first call may build them)."""
    return cpu_onednn and onednn.usable()


def compiler_options(dtype: Any, cpu_onednn: bool = True) -> dict[str, Any] | None:
    """``jax.jit(..., compiler_options=)`` for a ViT tower forward in ``dtype``: with ``cpu_onednn``, on
    CPU in float32, XLA's dots through its own oneDNN (:func:`xla.compiler_options`); else None (XLA's
    defaults)."""
    return xla.compiler_options(dtype) if cpu_onednn else None
