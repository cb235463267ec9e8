"""Benchmarks: JAX against PyTorch on the same inputs, in the same run."""
