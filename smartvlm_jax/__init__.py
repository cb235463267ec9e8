"""smartvlm_jax: the SMARTER vision-language reasoner for SMART-101 in JAX/Flax."""

__version__ = "0.1.0"
