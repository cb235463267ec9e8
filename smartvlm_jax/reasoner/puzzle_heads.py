"""Per-puzzle layers stored as stacked parameters and chosen per sample inside jit.

There is no Python loop over puzzles: every sample carries the row of the stack it uses, and the
batch is processed in one of two ways (config `head_impl`):
- "gather": each sample's weight matrices are gathered and applied with a batched matmul;
- "ragged": the batch is sorted by row, `jax.lax.ragged_dot` applies each row's weights to its
  contiguous group, and the result is unsorted.
Both cost O(batch), independent of how many puzzles the run has. Rows beyond a puzzle's class count
are zero-padded and masked, so a stack can hold decoders with different C_p.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from smartvlm_jax.reasoner.layers import gelu, torch_uniform


def _masked_init(fan_in: int, valid: np.ndarray):
    """PyTorch-default init times a 0/1 mask, so that padded entries of a stack start at zero."""
    base = torch_uniform(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return base(key, shape, dtype) * jnp.asarray(valid, dtype)

    return init


class StackedMLP(nn.Module):
    """`num_groups` MLPs (Linear -> GELU -> ... -> Linear) with identical shapes, one per stack row.

    `names` name each Linear (the reference's module names); `valid_out` optionally gives, per row, how
    many outputs of the last Linear are real (the rest are zero-initialised padding). Samples whose row
    is `num_groups` (no decoder of this kind) get unspecified outputs that callers discard.
    """

    names: Sequence[str]
    features: Sequence[int]
    num_groups: int
    impl: str = "gather"
    valid_out: Sequence[int] | None = None
    unused_first_row: bool = False  # row 0 exists only for indexing by puzzle id: keep it zero
    activation: str = "gelu"  # between the Linears: "gelu" (SMARTER) or "relu" (the SMART baseline)

    @nn.compact
    def __call__(self, x: jax.Array, rows: jax.Array) -> jax.Array:
        g = self.num_groups
        params = []
        fan_in = x.shape[-1]
        for i, (name, width) in enumerate(zip(self.names, self.features, strict=True)):
            valid = np.ones((g, width), bool)
            if i == len(self.features) - 1 and self.valid_out is not None:
                valid = np.arange(width)[None, :] < np.asarray(self.valid_out)[:, None]  # [G, width]
            if self.unused_first_row:
                valid[0] = False
            kernel = self.param(f"{name}_kernel", _masked_init(fan_in, valid[:, None, :]), (g, fan_in, width))
            bias = self.param(f"{name}_bias", _masked_init(fan_in, valid), (g, width))
            params.append((jnp.asarray(kernel), jnp.asarray(bias)))
            fan_in = width

        x, rows = jnp.asarray(x), jnp.asarray(rows)  # numpy inputs cannot be indexed by tracers
        safe = jnp.minimum(rows, g - 1)
        act = jax.nn.relu if self.activation == "relu" else gelu
        if g == 1:  # a single shared MLP: plain matmuls
            return _mlp(x, [(k[0], b[0]) for k, b in params], lambda h, kb: h @ kb[0] + kb[1], act)
        if self.impl == "gather":
            apply = lambda h, kb: jnp.einsum("bi,bio->bo", h, kb[0][safe]) + kb[1][safe]
            return _mlp(x, params, apply, act)
        # ragged: sort once, run every layer on the grouped batch, unsort at the end.
        order = jnp.argsort(rows, stable=True)
        inverse = jnp.argsort(order)
        sizes = jnp.bincount(rows, length=g).astype(jnp.int32)  # rows == g are left out of every group
        sorted_safe = safe[order]
        y = _mlp(x[order], params, lambda h, kb: lax.ragged_dot(h, kb[0], sizes) + kb[1][sorted_safe], act)
        return y[inverse]


def _mlp(x: jax.Array, params: list, apply, act=gelu) -> jax.Array:
    for i, kb in enumerate(params):
        x = apply(x, kb)
        if i < len(params) - 1:
            x = act(x)
    return x


class StackedGRU(nn.Module):
    """One-layer GRU decoders (PyTorch gate order r, z, n), one per sequence puzzle, hidden padded.

    Each decoder has hidden size C_p; the stack pads every hidden state to the largest C_p and forces
    the padded units to zero after each step, so a smaller decoder computes exactly its own GRU.
    Returns the hidden state after each of `steps` steps, [steps, B, C_max], with the input z fed at
    every step.

    `coupled=False` decodes each sample from a zero hidden state. `coupled=True` reproduces the
    reference quirk: the reference calls the GRU of puzzle p on the (B_p, R) matrix of its samples,
    which PyTorch reads as one unbatched sequence of length B_p, and carries the final hidden into the
    next step. So within each puzzle the hidden flows sample to sample in batch order, and step k+1
    starts from the hidden left by the last sample of step k. We scan the batch in order with one
    hidden state per decoder row, which reproduces exactly that, for all puzzles at once.
    """

    classes: Sequence[int]  # C_p per stack row
    steps: int
    coupled: bool = False

    @nn.compact
    def __call__(self, z: jax.Array, rows: jax.Array, valid: jax.Array) -> jax.Array:
        n, c_max, r = len(self.classes), max(self.classes), z.shape[-1]
        units = np.arange(c_max)[None, :] < np.asarray(self.classes)[:, None]  # [N, C]
        fan = np.sqrt(np.asarray(self.classes, np.float32))[:, None, None, None]  # PyTorch: 1/sqrt(hidden)

        def init(mask: np.ndarray):
            def f(key, shape, dtype=jnp.float32):
                u = jax.random.uniform(key, shape, dtype, -1.0, 1.0)
                return u / jnp.asarray(fan.reshape((n,) + (1,) * (len(shape) - 1)), dtype) * mask

            return f

        w_ih = self.param("weight_ih", init(units[:, None, None, :]), (n, 3, r, c_max))
        w_hh = self.param(
            "weight_hh", init(units[:, None, :, None] & units[:, None, None, :]), (n, 3, c_max, c_max)
        )
        b_ih = self.param("bias_ih", init(units[:, None, :]), (n, 3, c_max))
        b_hh = self.param("bias_hh", init(units[:, None, :]), (n, 3, c_max))

        w_ih, w_hh, b_ih, b_hh = map(jnp.asarray, (w_ih, w_hh, b_ih, b_hh))
        safe = jnp.minimum(rows, n - 1)
        # The input is the same at every step, so its projection is computed once.
        gi = jnp.einsum("br,bgrc->bgc", z, w_ih[safe]) + b_ih[safe]  # [B, 3, C]
        whh, bhh = w_hh[safe], b_hh[safe]  # [B, 3, C, C], [B, 3, C]
        valid = valid.astype(z.dtype)

        def cell(h, gi_, whh_, bhh_, valid_):
            gh = jnp.einsum("...c,...gcd->...gd", h, whh_) + bhh_
            r_gate = jax.nn.sigmoid(gi_[..., 0, :] + gh[..., 0, :])
            z_gate = jax.nn.sigmoid(gi_[..., 1, :] + gh[..., 1, :])
            cand = jnp.tanh(gi_[..., 2, :] + r_gate * gh[..., 2, :])
            return ((1.0 - z_gate) * cand + z_gate * h) * valid_

        if not self.coupled:
            h = jnp.zeros((z.shape[0], c_max), z.dtype)
            outs = []
            for _ in range(self.steps):  # K is small and static: unrolled
                h = cell(h, gi, whh, bhh, valid)
                outs.append(h)
            return jnp.stack(outs)

        # Quirk: one hidden per decoder row (plus a scratch row for samples without a GRU decoder),
        # updated sample after sample in batch order, carried from step to step.
        def sample_step(table, xs):
            row, gi_, whh_, bhh_, valid_ = xs
            h = cell(table[row], gi_, whh_, bhh_, valid_)
            return table.at[row].set(h), h

        def decode_step(table, _):
            return lax.scan(sample_step, table, (rows, gi, whh, bhh, valid))

        table0 = jnp.zeros((n + 1, c_max), z.dtype)
        _, outs = lax.scan(decode_step, table0, None, length=self.steps)
        return outs
