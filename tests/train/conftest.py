"""The reference run the training tests compare against (test_train.py, test_stops.py)."""

import pytest

from smartvlm_jax import train
from tests.support.runs import run_config


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """The uninterrupted run of tests.support.runs.run_config on all 8 simulated devices with cached
    features: (workdir, results). Tests read it and write only under evaluations/ (evaluate's own)."""
    workdir = tmp_path_factory.mktemp("reference")
    results = train.train_and_evaluate(run_config(), workdir)
    return workdir, results
