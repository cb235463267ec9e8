"""pyproject.toml: the pinned requirements*.txt lie in its ranges, its console scripts name entry functions,
and the training entry finds the configs package from anywhere. (.ci/install_check.sh installs the package
into a fresh venv and runs the smoke job through ``smartvlm-train``.)"""

from __future__ import annotations

import importlib
import pathlib
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from smartvlm_jax import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def pins(name: str) -> dict[str, Requirement]:
    """The requirements of one requirements file, without the files it includes (``-r``)."""
    lines = [line.split("#")[0].strip() for line in (REPO / name).read_text().splitlines()]
    reqs = [Requirement(line) for line in lines if line and not line.startswith("-")]
    # a package pinned per platform (torch's CPU build): the line for this machine
    return {canonicalize_name(r.name): r for r in reqs if r.marker is None or r.marker.evaluate()}


@pytest.mark.parametrize(
    ("file", "declared"),
    [
        ("requirements.txt", PROJECT["dependencies"]),
        ("requirements-dev.txt", PROJECT["optional-dependencies"]["dev"]),
    ],
)
def test_requirement_pins_lie_in_the_declared_ranges(file, declared):
    ranges = {canonicalize_name(r.name): r for r in map(Requirement, declared)}
    pinned = pins(file)
    assert set(pinned) == set(ranges), f"{file} and pyproject.toml name different packages"
    for name, pin in pinned.items():
        (spec,) = pin.specifier  # one == pin each
        assert spec.operator == "==", pin
        version = spec.version.split("+")[0]
        assert ranges[name].specifier.contains(version, prereleases=True), (str(pin), str(ranges[name]))
        if name != "torch":  # pinned per platform: tested below
            assert pin.marker == ranges[name].marker, (str(pin), str(ranges[name]))


@pytest.mark.slow
def test_dev_requirements_take_torchs_cpu_build_on_every_platform(tmp_path):
    """Linux: 2.13.0+cpu from PyTorch's CPU index (PyPI's plain Linux 2.13.0 is the CUDA build, several GB
    of nvidia-* wheels); elsewhere the plain version, a CPU build. And pip resolves it on this machine."""
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements-dev.txt").read_text().splitlines()]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    torch = [Requirement(line) for line in lines if line.startswith("torch")]
    for platform, version in (("linux", "2.13.0+cpu"), ("darwin", "2.13.0"), ("win32", "2.13.0")):
        chosen = [str(r.specifier) for r in torch if r.marker.evaluate({"sys_platform": platform})]
        assert chosen == [f"=={version}"], (platform, chosen)
    if sys.platform == "linux":
        wanted = tmp_path / "torch.txt"
        wanted.write_text(
            "\n".join(line for line in lines if line.startswith(("--extra-index-url", "torch")))
        )
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--no-deps",
                "--ignore-installed",
                "-r",
                str(wanted),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0 and "Would install torch-2.13.0+cpu" in out.stdout, out.stderr[-2000:]


def test_console_scripts_name_entry_functions():
    scripts = PROJECT["scripts"]
    names = ("train", "evaluate", "predict", "convert", "build-data", "sweep")
    assert set(scripts) == {f"smartvlm-{n}" for n in names}
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target


def test_config_import_root_is_the_folder_above_the_configs_package(tmp_path, monkeypatch):
    assert cli.config_import_root(str(REPO / "configs" / "smoke.py")) == str(REPO)
    monkeypatch.chdir(REPO)
    assert cli.config_import_root("configs/smoke.py") == str(REPO)
    (tmp_path / "mine.py").write_text("")
    assert cli.config_import_root(str(tmp_path / "mine.py")) is None  # no package: sys.path unchanged
    assert cli.config_file_of(["--workdir", "w", "--config", "c.py", "--config.x=1"]) == "c.py"
    assert cli.config_file_of(["--config=c.py:arg", "--workdir=w"]) == "c.py"
    assert cli.config_file_of(["--config.x=1"]) is None
