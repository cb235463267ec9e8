"""The towers' attention through the Pallas TPU flash-attention kernel (``towers.attention="flash"``).

``jax.experimental.pallas.ops.tpu.flash_attention`` (jax 0.10.2) computes softmax(q k^T) v block by
block, never holding a [T, T] score matrix per head: on DINOv2-base at 518 px (T = 1370) and 16 images per
v5e chip the attention's peak falls from 1.55 GiB to 0.40 GiB (docs/tpu.md, "Will it fit"). It is a
Mosaic kernel, so it compiles only for TPU (with no TPU present too: libtpu's compile-only topologies) and
runs on a CPU only in Pallas's TPU interpret mode (the tests). XLA cannot partition a Mosaic kernel: on a
mesh it runs per shard of the batch under ``shard_map``, over the mesh set by ``jax.set_mesh``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

# The kernel's query and key blocks (its defaults): the sequence is padded to a multiple of this.
BLOCK = 128


def padded_length(tokens: int) -> int:
    """T rounded up to a multiple of :data:`BLOCK` (the kernel's block size)."""
    return -(-tokens // BLOCK) * BLOCK


def _local(q: jax.Array, k: jax.Array, v: jax.Array, tokens: int) -> jax.Array:
    """The kernel on one shard: ``[b, H, Tp, Dh]`` padded operands, the padding its own segment (id 1) so
    that no real query attends to a padded key."""
    from jax.experimental.pallas.ops.tpu import flash_attention as fa

    b, _, padded, _ = q.shape
    ids = jnp.broadcast_to((jnp.arange(padded) >= tokens).astype(jnp.int32), (b, padded))
    return fa.flash_attention(q, k, v, segment_ids=fa.SegmentIds(ids, ids), sm_scale=1.0)


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Scaled (already) attention of ``[B, T, H, Dh]`` q/k/v -> ``[B, T, H, Dh]`` in q's dtype, by the
    Pallas TPU flash kernel; T is padded to a multiple of :data:`BLOCK` (padded keys masked out).

    Inside ``jax.set_mesh(mesh)`` the batch is split over every axis of the mesh (the towers' batch
    sharding, ``parallel.DATA_AXES``) and each device runs the kernel on its rows. Outside one, on more
    than one device, XLA refuses it ("Mosaic kernels cannot be automatically partitioned")."""
    tokens = q.shape[1]
    pad = ((0, 0), (0, 0), (0, padded_length(tokens) - tokens), (0, 0))
    qh, kh, vh = (jnp.pad(jnp.swapaxes(x, 1, 2), pad) for x in (q, k, v))  # [B, H, Tp, Dh]
    mesh = jax.sharding.get_abstract_mesh()

    def local(qs, ks, vs):
        return _local(qs, ks, vs, tokens)

    if mesh.empty or mesh.size == 1:
        out = local(qh, kh, vh)
    else:
        batch = P(tuple(mesh.axis_names))
        out = jax.shard_map(local, in_specs=batch, out_specs=batch, check_vma=False)(qh, kh, vh)
    return jnp.swapaxes(out[:, :, :tokens], 1, 2)
