"""Reading a run's closing summary (reports.format_summary) back: its lines and the paths it names."""

import pathlib
import shlex


def summary_line(line: str) -> tuple[str, str]:
    """("results", "/w/results.json") from a summary line "  results:     /w/results.json"."""
    label, _, value = line.partition(":")
    return label.strip(), value.strip()


def summary_paths(summary: str) -> list[pathlib.Path]:
    """Every path a run's closing summary names (TensorBoard's after its command)."""
    paths = []
    for line in summary.splitlines()[1:]:
        label, value = summary_line(line)
        if label != "XLA":
            paths += [pathlib.Path(shlex.split(p)[-1]) for p in value.split(", ")]
    return paths
