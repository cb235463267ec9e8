"""The exact (erf) GELU, the one definition shared by the frozen towers and the reasoner head.

It lives outside both packages because the towers must not import the reasoner; ``towers/vit.py`` maps
HF's ``hidden_act="gelu"`` to it and ``reasoner/layers.py`` uses it for the reference's ``F.gelu``.
"""

from __future__ import annotations

import math

import jax
from jax import lax


def gelu_erf(x: jax.Array) -> jax.Array:
    """Exact GELU, x * Phi(x), any shape and float dtype; written with ``lax.erf`` because
    ``jax.nn.gelu(approximate=False)`` lowers slowly on CPU."""
    return 0.5 * x * (1.0 + lax.erf(x * (1.0 / math.sqrt(2.0))))
