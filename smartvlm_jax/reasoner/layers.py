"""Small shared pieces of the head: exact GELU, PyTorch-default initialisers, Linear and LayerNorm.

Initialisers follow PyTorch's defaults (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for Linear weights and
biases, N(0, 1) for embeddings) so that a freshly built head starts from the reference's distribution.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from smartvlm_jax import activations

# The reference's F.gelu is the exact (erf) GELU; one definition serves the head and the towers.
gelu = activations.gelu_erf


def torch_uniform(fan_in: int) -> Callable:
    """PyTorch's default Linear/GRU init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for any shape."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Linear(nn.Module):
    """Dense layer with PyTorch's default init; kernel stored (in, out)."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        kernel = self.param("kernel", torch_uniform(fan_in), (fan_in, self.features))
        bias = self.param("bias", torch_uniform(fan_in), (self.features,))
        return x @ kernel + bias


class LayerNorm(nn.Module):
    """LayerNorm over the last axis with the reference's epsilon (PyTorch's biased variance)."""

    eps: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        return (x - mean) * lax.rsqrt(var + self.eps) * scale + bias
