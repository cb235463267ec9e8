"""Files shipped with the package: SMART-101 puzzle metadata and puzzle 1's icon classes."""

import importlib.resources
import pathlib


def path(name: str) -> pathlib.Path:
    """Path of a shipped asset file (e.g. "SMART_info_v2.csv", "icon-classes.txt")."""
    return pathlib.Path(str(importlib.resources.files(__package__).joinpath(name)))
