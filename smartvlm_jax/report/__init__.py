"""A report page for every run and sweep: ``report.html``, one self-contained file that opens from disk.

    from smartvlm_jax import report
    report.write_run_page(workdir)      # -> <workdir>/report.html (and <workdir>/test_predictions.npz)
    report.write_sweep_page(sweep_dir)  # -> <sweep_dir>/report.html and every member's page

``python -m smartvlm_jax.report --workdir DIR`` rewrites either (a sweep is told apart by its
``sweep.json``). What the pages show and the predictions file: docs/report.md.
"""

from smartvlm_jax.report.pages import MAX_CARDS, PAGE, is_sweep, write_page, write_run_page, write_sweep_page
from smartvlm_jax.report.predictions import NoFeaturesError

__all__ = [
    "MAX_CARDS",
    "PAGE",
    "NoFeaturesError",
    "is_sweep",
    "write_page",
    "write_run_page",
    "write_sweep_page",
]
