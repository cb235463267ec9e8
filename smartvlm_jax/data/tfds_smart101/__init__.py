"""TFDS builder `smart101`: SMART-101 (or synthetic) puzzles as ArrayRecord, built without TensorFlow."""

from smartvlm_jax.data.tfds_smart101.smart101_dataset_builder import (
    DATASET_NAME,
    SPLIT,
    VERSION,
    Smart101,
    dataset_path,
)

__all__ = ["DATASET_NAME", "SPLIT", "VERSION", "Smart101", "dataset_path"]
