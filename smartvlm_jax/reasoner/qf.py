"""The QF layer (SPEC 5.4) for a question that is one vector repeated L times.

The reference feeds the QF layer Q = q repeated L times, and the cross-attention keys and values are
im broadcast to L positions. Two facts follow, and this module computes their consequence directly:
- every cross-attention key is the same vector, so every score row is constant and the attention
  probabilities are exactly uniform (1/L) whatever the query is: the self-attention output (which
  only feeds the cross-attention query) cannot change the result, with or without dropout;
- every value row is V = value(im), so position i of the context is V * sum_j d_ij / L per head,
  where d_ij is the dropout multiplier of probability (i, j) (1 without dropout, Bernoulli(1-p)/(1-p)
  with it). Its mean over the L positions is V * S / (L^2 (1-p)), S ~ Binomial(L^2, 1-p) per sample
  and head: we draw S instead of L^2 Bernoulli masks, which is the same distribution.
The PyTorch port computes the literal attention; the parity tests check the two agree. The query and
key weights (and the relative-distance embeddings under `reference_quirks`) exist, as in the
reference, and receive zero gradient.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from smartvlm_jax.reasoner.layers import LayerNorm, Linear, gelu


def binomial_by_inversion(key: jax.Array, n: int, p: jax.Array | float, shape: tuple[int, ...]) -> jax.Array:
    """Draws of Binomial(``n``, ``p``) (float32, ``shape``) by inverse transform sampling: one uniform per
    draw, placed in the CDF over 0..n (n static). A Python float ``p`` in [0, 1] (a run's dropout rate)
    takes the CDF from scipy in float64, a constant of the program; a float32 scalar ``p`` (traced, as a
    vmapped member's rate) computes it in the step from the log-pmf in float32.

    The same distribution as ``jax.random.binomial`` to float32 precision (CDF steps below ~1e-7 merge
    into their neighbours), and a far smaller program: that one's rejection loop was 950 of the smoke
    head's train-step instructions and about a tenth of its compile time (issue 30). ``p`` = 1 gives n."""
    if isinstance(p, float):
        import scipy.stats  # here, at trace time: its import is 0.55 s of every process's start-up

        cdf = jnp.asarray(scipy.stats.binom.cdf(np.arange(n + 1), n, p), jnp.float32)
    else:
        k = jnp.arange(n + 1, dtype=jnp.float32)
        p = jnp.asarray(p, jnp.float32)
        log_pmf = (
            jax.scipy.special.gammaln(n + 1.0)
            - jax.scipy.special.gammaln(k + 1.0)
            - jax.scipy.special.gammaln(n - k + 1.0)
            + jax.scipy.special.xlogy(k, p)
            + jax.scipy.special.xlog1py(n - k, -p)
        )
        cdf = jnp.cumsum(jnp.exp(log_pmf))
    u = jax.random.uniform(key, shape, jnp.float32) * cdf[-1]
    # the first k whose CDF exceeds u; "scan" is a loop of log2(n) compares, not an [.., n] one
    return jnp.searchsorted(cdf, u, side="right", method="scan").astype(jnp.float32)


class QFAttention(nn.Module):
    """Parameters of one QF attention block (query, key, value; optional distance embedding).

    Returns the mean over the L query positions of the attention context for keys/values that are one
    vector broadcast to all positions (see the module docstring).
    """

    hidden: int
    num_heads: int
    max_qlen: int
    pdrop: float
    with_distance_embedding: bool

    @nn.compact
    def __call__(
        self, query_in: jax.Array, kv_in: jax.Array, train: bool, pdrop: jax.Array | float | None = None
    ) -> jax.Array:
        """``pdrop``: None uses the attribute (a rate of 0 draws nothing); a float32 scalar, possibly traced,
        always draws, so a rate of 0 keeps every probability (scale exactly 1)."""
        head = self.hidden // self.num_heads
        # Query and key exist but cannot influence the output; a zero-row call creates them at no cost.
        Linear(self.hidden, name="query")(jnp.zeros((0, query_in.shape[-1]), query_in.dtype))
        Linear(self.hidden, name="key")(jnp.zeros((0, kv_in.shape[-1]), kv_in.dtype))
        if self.with_distance_embedding:  # reference quirk: computed, then discarded
            self.param("distance_embedding", nn.initializers.normal(1.0), (2 * self.max_qlen - 1, head))
        value = Linear(self.hidden, name="value")(kv_in)  # [B, hidden]
        # A traced rate cannot take the Python test; it draws as the static path does (same key, shape).
        if not train or (pdrop is None and self.pdrop == 0.0):
            return value
        rate = self.pdrop if pdrop is None else pdrop
        n = self.max_qlen * self.max_qlen
        kept = binomial_by_inversion(
            self.make_rng("dropout"), n, 1.0 - rate, (value.shape[0], self.num_heads)
        )
        scale = kept / (n * (1.0 - rate))
        value = value.reshape(value.shape[0], self.num_heads, head) * scale[..., None].astype(value.dtype)
        return value.reshape(value.shape[0], self.hidden)


class QFIntermediate(nn.Module):
    """x -> Linear(768, H) -> GELU -> Linear(H, 768) -> dropout -> LayerNorm(x + that)."""

    h_sz: int
    pdrop: float
    eps: float

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, pdrop: jax.Array | float | None = None) -> jax.Array:
        y = Linear(x.shape[-1], name="dense_final")(gelu(Linear(self.h_sz, name="dense")(x)))
        if pdrop is None:
            y = nn.Dropout(self.pdrop, deterministic=not train)(y)
        elif train:  # a traced rate: the same module name, so the same dropout key as nn.Dropout's
            y = RateDropout(name="Dropout_0")(y, pdrop)
        return LayerNorm(self.eps, name="layer_norm")(x + y)


class RateDropout(nn.Module):
    """``nn.Dropout`` for a rate that may be traced (float32 scalar in [0, 1)): the same Bernoulli draw
    from the same key, ``inputs / keep`` where kept and 0 elsewhere, so a rate equal to a static one gives
    the same values. ``nn.Dropout`` tests ``rate == 0`` in Python, which a tracer cannot answer; here a rate
    of 0 keeps everything (``bernoulli(p=1)``) and divides by 1. No parameters."""

    @nn.compact
    def __call__(self, inputs: jax.Array, rate: jax.Array | float) -> jax.Array:
        keep = 1.0 - rate
        mask = jax.random.bernoulli(self.make_rng("dropout"), p=keep, shape=inputs.shape)
        return jax.lax.select(mask, inputs / keep, jnp.zeros_like(inputs))


class QFLayer(nn.Module):
    """Self-attention over Q, cross-attention to im, mean over L, intermediate (SPEC 5.4):
    im [B, R] and q [B, text_dim] float32 -> [B, text_dim].

    Sized by the head's config (text_dim, num_heads, h_sz, max_qlen, pdrop, ln_eps); the relative-distance
    embeddings exist under ``reference_quirks``. ``pdrop`` (float32 scalar, may be traced) replaces the
    config's dropout rate with the same random bits; None keeps it.
    """

    cfg: ml_collections.FrozenConfigDict

    @nn.compact
    def __call__(
        self, im: jax.Array, q: jax.Array, train: bool, pdrop: jax.Array | float | None = None
    ) -> jax.Array:
        cfg = self.cfg
        common = dict(
            hidden=cfg.text_dim,
            num_heads=cfg.num_heads,
            max_qlen=cfg.max_qlen,
            pdrop=cfg.pdrop,
            with_distance_embedding=cfg.reference_quirks,
        )
        # Self-attention of the repeated question: its output is the value of q at every position, and
        # it only feeds the cross-attention query, which cannot change the result; only its parameters
        # are created.
        QFAttention(**common, name="mha")(jnp.zeros((0, q.shape[-1]), q.dtype), q[:0], train=False)
        x = QFAttention(**common, name="crossattention")(q, im, train, pdrop)
        return QFIntermediate(cfg.h_sz, cfg.pdrop, cfg.ln_eps, name="intermediate")(x, train, pdrop)
