"""Per-puzzle layers stored as stacked parameters and chosen per sample inside jit.

There is no Python loop over puzzles: every sample carries the row of the stack it uses, and the
batch is processed in one of these ways (config `head_impl`):
- "gather": each sample's weight matrices are gathered and applied with a batched matmul;
- "dense": every row's layer runs on every sample and a one-hot contraction keeps each sample's row;
- "ragged": the batch is sorted by row, `jax.lax.ragged_dot` applies each row's weights to its
  contiguous group, and the result is unsorted (not under `jax.vmap`);
- "auto" (default): dense for a stack with at most half as many rows as the batch has samples (the
  run's few decoders, the image encoders of a run of a few puzzles), else gather (`resolve_impl`).
Gather and ragged cost O(batch) whatever the number of rows; dense O(batch x rows), with no weight
copies. Rows beyond a puzzle's class count are zero-padded and masked, so a stack can hold decoders
with different C_p.

`StackedMLP` holds per-puzzle MLPs (image encoders, ordinary answer decoders), `StackedRNN` per-puzzle
GRU or LSTM sequence decoders, and `PuzzleHead` assembles them into the two ends that the SMARTER head
(model.py) and the SMART baseline (baseline.py) share: image encoders in front, answer logits behind.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from smartvlm_jax.reasoner import config as config_lib
from smartvlm_jax.reasoner.layers import gelu, torch_uniform

# The heads' nonlinearity by name: exact GELU (SMARTER, the reference's F.gelu) or ReLU (the SMART baseline).
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {"gelu": gelu, "relu": jax.nn.relu}


def resolve_impl(impl: str, rows: int, batch: int) -> str:
    """The way a stack of ``rows`` per-puzzle layers runs on a batch of ``batch`` samples: ``impl`` itself,
    or for ``"auto"``: "dense" when the stack has at most half as many rows as the batch has samples, else
    "gather". Dense costs rows x batch multiply-adds per weight and copies no weights; gather copies every
    sample's weights, which costs more until the stack is large (benchmarks/head.py; docs/heads.md), and
    under ``jax.vmap`` those copies are batched gathers with transposes around them."""
    if impl != "auto":
        return impl
    return "dense" if 2 * rows <= batch else "gather"


def _masked_init(fan_in: int, valid: np.ndarray):
    """PyTorch-default init times a 0/1 mask, so that padded entries of a stack start at zero."""
    base = torch_uniform(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return base(key, shape, dtype) * jnp.asarray(valid, dtype)

    return init


class StackedMLP(nn.Module):
    """`num_groups` MLPs (Linear -> act -> ... -> Linear) with identical shapes, one per stack row.

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
    activation: str = "gelu"  # between the Linears, a key of ACTIVATIONS

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
        act = ACTIVATIONS[self.activation]
        impl = resolve_impl(self.impl, g, x.shape[0])
        if g == 1:  # a single shared MLP: plain matmuls
            return _mlp(x, [(k[0], b[0]) for k, b in params], lambda h, kb: h @ kb[0] + kb[1], act)
        if impl == "gather":
            apply = lambda h, kb: jnp.einsum("bi,bio->bo", h, kb[0][safe]) + kb[1][safe]
            return _mlp(x, params, apply, act)
        if impl == "dense":
            pick = jax.nn.one_hot(safe, g, dtype=x.dtype)  # [B, G]
            return _mlp(x, params, lambda h, kb: _one_hot_linear(h, pick, *kb), act)
        # ragged: sort once, run every layer on the grouped batch, unsort at the end.
        order = jnp.argsort(rows, stable=True)
        inverse = jnp.argsort(order)
        sizes = jnp.bincount(rows, length=g).astype(jnp.int32)  # rows == g are left out of every group
        sorted_safe = safe[order]
        y = _mlp(x[order], params, lambda h, kb: lax.ragged_dot(h, kb[0], sizes) + kb[1][sorted_safe], act)
        return y[inverse]


def _one_hot_linear(h: jax.Array, pick: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """Each sample's row of a stacked Linear, as one matmul: h [B, I] is placed in its row's block of a
    [B, G*I] input (zeros elsewhere, from the one-hot ``pick`` [B, G]) against the kernel [G, I, O] read as
    [G*I, O], which is its memory layout, so neither pass transposes the weights. Exact: the other
    blocks add zeros."""
    g, i, o = kernel.shape
    blocks = (pick[:, :, None] * h[:, None, :]).reshape(h.shape[0], g * i)
    return blocks @ kernel.reshape(g * i, o) + pick @ bias


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


def _gru_step(state, gi, hidden, valid):
    (h,) = state
    return (gru_update(gi, hidden(h), h) * valid,)


def _lstm_step(state, gi, hidden, valid):
    h, c = state
    g = gi + hidden(h)
    i, f = jax.nn.sigmoid(g[..., 0, :]), jax.nn.sigmoid(g[..., 1, :])
    cand, o = jnp.tanh(g[..., 2, :]), jax.nn.sigmoid(g[..., 3, :])
    c = (f * c + i * cand) * valid
    return (o * jnp.tanh(c)) * valid, c


@dataclasses.dataclass(frozen=True)
class RNNCell:
    """A recurrent cell in PyTorch's parameter layout: its gate count and the arrays of its state.

    ``step(state, gi, hidden, valid)`` takes the state (a tuple of ``state_size`` arrays [..., C], the
    hidden first), the input projection gi [..., G, C] (bias included), ``hidden``: the hidden projection
    h [..., C] -> [..., G, C] (weight_hh and bias_hh of each sample's row), and the 0/1 mask of real units
    [..., C]; it returns the next state with the padded units at zero.
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
    impl: str = "gather"  # resolve_impl's "dense": every row's projections, one-hot picked; else gathers

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
        valid = valid.astype(z.dtype)
        if resolve_impl(self.impl, n, z.shape[0]) == "dense" and not self.coupled:  # one-hot picked rows
            pick = jax.nn.one_hot(safe, n, dtype=z.dtype)  # [B, N]
            gi = jnp.einsum("br,ngrc,bn->bgc", z, w_ih, pick) + jnp.einsum("bn,ngc->bgc", pick, b_ih)
            bhh = jnp.einsum("bn,ngc->bgc", pick, b_hh)
            hidden = lambda h: jnp.einsum("bc,ngcd,bn->bgd", h, w_hh, pick) + bhh
        else:  # each sample's row gathered
            # The input is the same at every step, so its projection is computed once.
            gi = jnp.einsum("br,bgrc->bgc", z, w_ih[safe]) + b_ih[safe]  # [B, G, C]
            whh, bhh = w_hh[safe], b_hh[safe]  # [B, G, C, C], [B, G, C]
            hidden = lambda h: jnp.einsum("...c,...gcd->...gd", h, whh) + bhh

        if not self.coupled:
            # A loop of K / 5 iterations over 5 unrolled steps: the train step's program (forward and
            # backward) is 15 % smaller than K unrolled steps and compiles faster, while a loop of K single
            # steps made the smoke head's step 6 % slower (each iteration's fixed cost; issue 30).
            def decode_step(state, _):
                state = cell.step(state, gi, hidden, valid)
                return state, state[0]

            state0 = (jnp.zeros((z.shape[0], c_max), z.dtype),) * cell.state_size
            return lax.scan(decode_step, state0, None, length=self.steps, unroll=5)[1]

        # Quirk: one state per decoder row (plus a scratch row for samples without a decoder of this
        # kind), updated sample after sample in batch order, carried from step to step.
        def sample_step(table, xs):
            row, gi_, whh_, bhh_, valid_ = xs
            hidden_ = lambda h: jnp.einsum("c,gcd->gd", h, whh_) + bhh_
            state = cell.step(tuple(t[row] for t in table), gi_, hidden_, valid_)
            return tuple(t.at[row].set(s) for t, s in zip(table, state, strict=True)), state[0]

        def decode_step(table, _):
            return lax.scan(sample_step, table, (rows, gi, whh, bhh, valid))

        table0 = (jnp.zeros((n + 1, c_max), z.dtype),) * cell.state_size
        _, outs = lax.scan(decode_step, table0, None, length=self.steps)
        return outs


class PuzzleHead(nn.Module):
    """A head's per-puzzle ends around its own middle: features -> logits [B, K, C_max].

    ``__call__`` takes the pooled vision features [B, Dv] float32, the question's text features (whatever the
    head's middle takes), puzzle_ids [B] int, ``train`` and ``pdrop`` (None: the config's dropout rate; or a
    float32 scalar that may be traced, as when members train under ``jax.vmap``); it encodes the image with
    the puzzle's encoder (SPEC 5.2), hands im [B, R] and the text to the subclass's ``_fuse`` for the fused
    code z [B, R] (SPEC 5.3-5.6, or the baseline's question path and fusion), and decodes z into logits with
    the puzzle's answer decoder (SPEC 5.7). The SMARTER head (model.py) and the SMART baseline (baseline.py)
    set the class attributes below and define ``_fuse``. Layers made in ``_fuse`` and here are all the head's
    own children, so the parameters of the ends sit at the top of its tree (``im_encoder``,
    ``ans_decoder_mlp``, ``ans_decoder_gru`` / ``ans_decoder_lstm``), where the checkpoint converters look for
    them.
    """

    cfg: ml_collections.FrozenConfigDict
    # The puzzle ids whose image encoders the ``im_encoder`` stack holds, in its row order; None: every id
    # 0..101 (the reference's layout, row p for puzzle p). Training sets it to the run's puzzles
    # (``reasoner.presence.encoder_rows``) and hands the step those rows only, which are all a batch can use.
    encoder_rows: tuple[int, ...] | None = None

    activation: ClassVar[str] = "gelu"  # key of ACTIVATIONS: in the encoders and decoders, and after im
    decoder_names: ClassVar[tuple[str, ...]] = ("ln1", "ln2", "ln3")  # reference names of the MLP's Linears
    sequence_cell: ClassVar[str] = "gru"  # key of RNN_CELLS; its stack is named ans_decoder_<cell>

    @nn.compact
    def __call__(
        self,
        vision: jax.Array,
        text: jax.Array,
        puzzle_ids: jax.Array,
        train: bool = False,
        pdrop: jax.Array | float | None = None,
    ) -> jax.Array:
        pid = self._puzzle_rows(puzzle_ids)
        z = self._fuse(self._encode_image(vision, pid), text, train, pdrop)
        return self._answer_logits(z, pid)

    def _fuse(
        self, im: jax.Array, text: jax.Array, train: bool, pdrop: jax.Array | float | None
    ) -> jax.Array:
        """im [B, R] and the text features -> the fused code z [B, R]: the head's own middle.

        ``pdrop``: None uses ``cfg.pdrop`` (a Python float); a float32 scalar (traced, e.g. one rate per
        vmapped member) replaces it with the same random bits."""
        raise NotImplementedError

    @staticmethod
    def _puzzle_rows(puzzle_ids: jax.Array) -> jax.Array:
        """Puzzle ids [B] -> int32 rows of the per-id tables, clipped into range so that every gather is
        valid; ids outside the run have C_p = 0 there, so their logits come out all masked."""
        return jnp.clip(puzzle_ids.astype(jnp.int32), 0, config_lib.NUM_ENCODER_SLOTS - 1)

    def _encode_image(self, vision: jax.Array, pid: jax.Array) -> jax.Array:
        """Vision features [B, Dv] float32 and rows [B] -> im [B, R] (SPEC 5.2): the puzzle's encoder
        Linear(Dv, R) -> act -> Linear(R, R), then act; one shared encoder under use_single_image_head."""
        cfg = self.cfg
        r, single = cfg.repr_size, cfg.use_single_image_head
        groups, rows = config_lib.NUM_ENCODER_SLOTS, pid
        if single:
            groups, rows = 1, jnp.zeros_like(pid)
        elif self.encoder_rows is not None:  # ids without a row get row `groups`: no encoder, output unused
            groups = len(self.encoder_rows)
            slot_of_pid = np.full(config_lib.NUM_ENCODER_SLOTS, groups, np.int32)
            slot_of_pid[list(self.encoder_rows)] = np.arange(groups)
            rows = jnp.asarray(slot_of_pid)[pid]
        im = StackedMLP(
            names=("0", "2"),
            features=(r, r),
            num_groups=groups,
            impl=cfg.head_impl,
            unused_first_row=not single and self.encoder_rows is None,
            activation=self.activation,
            name="im_encoder",
        )(vision, rows)
        # The reference applies the outer activation only on the per-puzzle path; its single head omits it.
        if not (single and cfg.reference_quirks):
            im = ACTIVATIONS[self.activation](im)
        return im

    def _answer_logits(self, z: jax.Array, pid: jax.Array) -> jax.Array:
        """Fused code z [B, R] float32 and rows [B] -> logits [B, K, C_max] (SPEC 5.7), C_max the run's
        largest C_p.

        Ordinary puzzles: their MLP decoder (Linear(R, R) -> act -> Linear(R, R) -> act -> Linear(R, C_p))
        fills position 0, positions 1..K-1 are MASKED_LOGIT. Sequence puzzles: their RNN decoder's hidden
        after step k fills position k. Classes >= C_p of the sample's puzzle are MASKED_LOGIT.
        """
        cfg, tab = self.cfg, config_lib.tables(self.cfg)
        r, k, c_max = cfg.repr_size, cfg.num_decode_steps, tab.max_classes
        logits = jnp.full((z.shape[0], k, c_max), config_lib.MASKED_LOGIT, z.dtype)
        if tab.ordinary_ids:
            c_o = tab.max_ordinary_classes
            out = StackedMLP(
                names=self.decoder_names,
                features=(r, r, c_o),
                num_groups=len(tab.ordinary_ids),
                impl=cfg.head_impl,
                valid_out=tab.ordinary_classes,
                activation=self.activation,
                name="ans_decoder_mlp",
            )(z, jnp.asarray(tab.mlp_slot_of_pid)[pid])
            logits = logits.at[:, 0, :c_o].set(out)
        if tab.sequence_ids:
            c_s = tab.max_sequence_classes
            valid = jnp.arange(c_s)[None, :] < jnp.asarray(tab.classes_of_pid)[pid][:, None]
            seq = StackedRNN(
                cell=self.sequence_cell,
                classes=tab.sequence_classes,
                steps=k,
                coupled=cfg.reference_quirks,
                impl=cfg.head_impl,
                name=f"ans_decoder_{self.sequence_cell}",
            )(z, jnp.asarray(tab.gru_slot_of_pid)[pid], valid)  # [K, B, C_s]; the slot table serves any cell
            seq = jnp.pad(jnp.swapaxes(seq, 0, 1), ((0, 0), (0, 0), (0, c_max - c_s)))
            logits = jnp.where(jnp.asarray(tab.is_sequence_pid)[pid][:, None, None], seq, logits)
        class_ok = jnp.arange(c_max)[None, None, :] < jnp.asarray(tab.classes_of_pid)[pid][:, None, None]
        return jnp.where(class_ok, logits, config_lib.MASKED_LOGIT)
