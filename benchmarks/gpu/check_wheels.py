"""Checks, on this machine, that the wheels carried to a lent GPU machine complete its image.

For each wheel in ``--wheels`` (cp312 manylinux x86-64, downloaded by prepare.sh) every dependency its
metadata declares for that target (Python 3.12, Linux x86-64) must be carried too or be on the device
(``device_packages.txt``), within the declared version range where the device's version is known. So must
every runtime requirement of the project (``requirements.txt``): there the device's own version wins,
and where it differs from our pin the line says so (those are the versions the GPU run tests). The wheels
and the repository's tracked files must fit the device tool's 64 MiB. Exits 1 with the problems listed.

    python benchmarks/gpu/check_wheels.py --wheels .gpu_wheels
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import zipfile

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
TARGET = {
    **default_environment(),
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}
LIMIT_MIB = 64  # the device tool's limit on what travels (working tree + carried paths)


def read_list(path: pathlib.Path) -> dict[str, str | None]:
    """``name[==version]`` lines (comments skipped) -> {canonical name: version or None}."""
    out: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[canonicalize_name(name)] = version or None
    return out


def wheel_requirements(path: pathlib.Path) -> list[Requirement]:
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    lines = [line for line in text.splitlines() if line.startswith("Requires-Dist:")]
    return [Requirement(line.split(":", 1)[1].strip()) for line in lines]


def applies(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**TARGET, "extra": e}) for e in extras | {""})


def tracked_bytes() -> int:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return sum((REPO / f).stat().st_size for f in files.decode().split("\0") if f and (REPO / f).is_file())


def is_target_wheel(tags) -> bool:
    """Whether a wheel's tags install on the device: pure Python (py3 or cp312, any platform) or cp312
    x86-64."""
    return any(
        (t.interpreter in ("py3", "cp312") and t.platform == "any")
        or ("x86_64" in t.platform and t.interpreter == "cp312")
        for t in tags
    )


def carried_wheels(wheels: list[pathlib.Path]) -> tuple[dict[str, str], list[str]]:
    """({canonical name: version} of the carried wheels, problems: a wheel for another target, a name
    carried twice)."""
    problems, carried = [], {}
    for w in wheels:
        name, version, _, tags = parse_wheel_filename(w.name)
        if not is_target_wheel(tags):
            problems.append(f"{w.name}: not a cp312 / py3 x86-64 wheel")
        if name in carried:
            problems.append(f"{name}: two wheels carried (the device install refuses that)")
        carried[name] = str(version)
    return carried, problems


def project_requirements(available: dict[str, str | None]) -> tuple[list[str], list[str]]:
    """(problems, notes) of ``requirements.txt`` against what is carried or on the device: a requirement
    neither has is a problem, another version than our pin a note (the device's version wins)."""
    problems, notes = [], []
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        req = Requirement(line) if line else None
        if req is None or (req.marker is not None and not req.marker.evaluate(TARGET)):
            continue
        name = canonicalize_name(req.name)
        if name.startswith("onednn"):
            continue  # CPU kernels: never used on a GPU backend
        have = available.get(name)
        if name not in available:
            problems.append(f"requirements.txt: {req} neither carried nor on the device")
        elif have and not req.specifier.contains(have, prereleases=True):
            notes.append(f"requirements.txt pins {req}; the device has {have}: the GPU run uses {have}")
    return problems, notes


def check(wheels_dir: pathlib.Path, device: dict[str, str | None]) -> tuple[list[str], list[str]]:
    """(problems, notes) of the carried wheels against the device and the project's requirements."""
    wheels = sorted(wheels_dir.glob("*.whl"))
    carried, problems = carried_wheels(wheels)
    available = {**device, **carried}
    unrecorded: set[str] = set()  # on the device, version not recorded: its range stays unchecked

    def satisfied(req: Requirement, who: str) -> None:
        name = canonicalize_name(req.name)
        if name not in available:
            problems.append(f"{who} needs {req}: neither carried nor on the device")
        elif available[name] is None:
            unrecorded.add(str(req.name))
        elif req.specifier and not req.specifier.contains(available[name], prereleases=True):
            where = "carried" if name in carried else "on the device"
            problems.append(f"{who} needs {req}: {name} {available[name]} {where}")

    for w in wheels:
        for req in wheel_requirements(w):
            if applies(req, set()):
                satisfied(req, w.name.split("-")[0])
    more_problems, notes = project_requirements(available)
    problems += more_problems
    if unrecorded:
        names = ", ".join(sorted(unrecorded))
        notes.append(f"on the device, version not recorded (ranges unchecked): {names}")
    size = sum(w.stat().st_size for w in wheels) + tracked_bytes()
    line = f"wheels {len(wheels)} ({sum(w.stat().st_size for w in wheels) / 2**20:.1f} MiB) + tracked files"
    notes.append(f"{line} = {size / 2**20:.1f} MiB of the {LIMIT_MIB} MiB that may travel")
    if size > LIMIT_MIB * 2**20:
        problems.append(f"{size / 2**20:.1f} MiB would travel: over the device tool's {LIMIT_MIB} MiB")
    return problems, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wheels", default=str(REPO / ".gpu_wheels"))
    parser.add_argument("--device", default=str(HERE / "device_packages.txt"))
    args = parser.parse_args(argv)
    problems, notes = check(pathlib.Path(args.wheels), read_list(pathlib.Path(args.device)))
    for n in notes:
        print(f"note: {n}")
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
