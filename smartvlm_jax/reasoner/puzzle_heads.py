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

import dataclasses
from collections.abc import Callable, Sequence

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


def gru_update(gi: jax.Array, gh: jax.Array, h: jax.Array) -> jax.Array:
    """PyTorch's GRU equations (SPEC 5.7): the new hidden [..., C] from h [..., C] and the input and hidden
    projections gi, gh [..., 3, C] (gates r, z, n, biases included); n = tanh(gi_n + r * gh_n) is why the two
    projections stay apart."""
    r = jax.nn.sigmoid(gi[..., 0, :] + gh[..., 0, :])
    z = jax.nn.sigmoid(gi[..., 1, :] + gh[..., 1, :])
    n = jnp.tanh(gi[..., 2, :] + r * gh[..., 2, :])
    return (1.0 - z) * n + z * h


def _gru_step(state, gi, whh, bhh, valid):
    (h,) = state
    gh = jnp.einsum("...c,...gcd->...gd", h, whh) + bhh
    return (gru_update(gi, gh, h) * valid,)


def _lstm_step(state, gi, whh, bhh, valid):
    h, c = state
    g = gi + jnp.einsum("...c,...gcd->...gd", h, whh) + bhh
    i, f = jax.nn.sigmoid(g[..., 0, :]), jax.nn.sigmoid(g[..., 1, :])
    cand, o = jnp.tanh(g[..., 2, :]), jax.nn.sigmoid(g[..., 3, :])
    c = (f * c + i * cand) * valid
    return (o * jnp.tanh(c)) * valid, c


@dataclasses.dataclass(frozen=True)
class RNNCell:
    """A recurrent cell in PyTorch's parameter layout: its gate count and the arrays of its state.

    ``step(state, gi, whh, bhh, valid)`` takes the state (a tuple of ``state_size`` arrays [..., C], the
    hidden first), the input projection gi [..., G, C] (bias included), the hidden weights whh
    [..., G, C, C] and bias bhh [..., G, C], and the 0/1 mask of real units [..., C]; it returns the next
    state with the padded units at zero.
    """

    gates: int
    state_size: int
    step: Callable


# The per-puzzle sequence decoders: GRU (SMARTER, gates r, z, n; state h) and LSTM (the SMART baseline,
# gates i, f, g, o; state h, c).
RNN_CELLS: dict[str, RNNCell] = {"gru": RNNCell(3, 1, _gru_step), "lstm": RNNCell(4, 2, _lstm_step)}


class StackedRNN(nn.Module):
    """One-layer RNN decoders of one cell kind (``"gru"`` or ``"lstm"``), one per sequence puzzle (SPEC 5.7,
    and the baseline's LSTMs in SPEC 5 "Variants").

    Each decoder has hidden size C_p; the stack pads every state to the largest C_p and forces the padded
    units to zero after each step, so a smaller decoder computes exactly its own RNN. Parameters keep
    PyTorch's gate stacking, per row: weight_ih [G, R, C_max], weight_hh [G, C_max, C_max], bias_ih and
    bias_hh [G, C_max] (G = 3 for the GRU, 4 for the LSTM). Inputs: z [B, R] float32, rows [B] int (stack
    row of each sample; N = no decoder of this kind), valid [B, C_max] bool (units below the sample's C_p).
    Returns the hidden state after each of ``steps`` steps, [steps, B, C_max], with z the input at every
    step.

    ``coupled=False`` decodes each sample from a zero state. ``coupled=True`` reproduces the reference
    quirk: the reference calls the RNN of puzzle p on the (B_p, R) matrix of its samples, which PyTorch
    reads as one unbatched sequence of length B_p, and carries the final state into the next step. So
    within each puzzle the state flows sample to sample in batch order, and step k+1 starts from the
    state left by the last sample of step k. We scan the batch in order with one state per decoder row,
    which reproduces exactly that, for all puzzles at once.
    """

    cell: str  # a key of RNN_CELLS
    classes: Sequence[int]  # C_p per stack row
    steps: int
    coupled: bool = False

    @nn.compact
    def __call__(self, z: jax.Array, rows: jax.Array, valid: jax.Array) -> jax.Array:
        cell = RNN_CELLS[self.cell]
        n, c_max, r, g = len(self.classes), max(self.classes), z.shape[-1], cell.gates
        units = np.arange(c_max)[None, :] < np.asarray(self.classes)[:, None]  # [N, C]
        fan = np.sqrt(np.asarray(self.classes, np.float32))[:, None, None, None]  # PyTorch: 1/sqrt(hidden)

        def init(mask: np.ndarray):
            def f(key, shape, dtype=jnp.float32):
                u = jax.random.uniform(key, shape, dtype, -1.0, 1.0)
                return u / jnp.asarray(fan.reshape((n,) + (1,) * (len(shape) - 1)), dtype) * mask

            return f

        w_ih = self.param("weight_ih", init(units[:, None, None, :]), (n, g, r, c_max))
        w_hh = self.param(
            "weight_hh", init(units[:, None, :, None] & units[:, None, None, :]), (n, g, c_max, c_max)
        )
        b_ih = self.param("bias_ih", init(units[:, None, :]), (n, g, c_max))
        b_hh = self.param("bias_hh", init(units[:, None, :]), (n, g, c_max))

        w_ih, w_hh, b_ih, b_hh = map(jnp.asarray, (w_ih, w_hh, b_ih, b_hh))
        safe = jnp.minimum(rows, n - 1)
        # The input is the same at every step, so its projection is computed once.
        gi = jnp.einsum("br,bgrc->bgc", z, w_ih[safe]) + b_ih[safe]  # [B, G, C]
        whh, bhh = w_hh[safe], b_hh[safe]  # [B, G, C, C], [B, G, C]
        valid = valid.astype(z.dtype)

        if not self.coupled:
            state = (jnp.zeros((z.shape[0], c_max), z.dtype),) * cell.state_size
            outs = []
            for _ in range(self.steps):  # K is small and static: unrolled
                state = cell.step(state, gi, whh, bhh, valid)
                outs.append(state[0])
            return jnp.stack(outs)

        # Quirk: one state per decoder row (plus a scratch row for samples without a decoder of this
        # kind), updated sample after sample in batch order, carried from step to step.
        def sample_step(table, xs):
            row, gi_, whh_, bhh_, valid_ = xs
            state = cell.step(tuple(t[row] for t in table), gi_, whh_, bhh_, valid_)
            return tuple(t.at[row].set(s) for t, s in zip(table, state, strict=True)), state[0]

        def decode_step(table, _):
            return lax.scan(sample_step, table, (rows, gi, whh, bhh, valid))

        table0 = (jnp.zeros((n + 1, c_max), z.dtype),) * cell.state_size
        _, outs = lax.scan(decode_step, table0, None, length=self.steps)
        return outs
