"""Shared fixtures: one synthetic SMART-101 folder and its built TFDS dataset per test session."""

import pytest

from smartvlm_jax.data import build, synthetic

PER_PUZZLE = 20


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("smart101")
    synthetic.write_dataset(str(root), PER_PUZZLE, seed=0)
    return str(root)


@pytest.fixture(scope="session")
def built_dir(synthetic_root, tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    build.build(synthetic_root, data_dir)
    return data_dir
