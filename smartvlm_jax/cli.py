"""How the command-line tools answer the project's input errors: one line, ``error: ...``, exit status 1.

A config field, a path, a malformed CSV row, a bad image or a refused checkpoint is the user's to fix, and
the message names it; Python's traceback would bury that line, so it is shown only with ``--traceback``.
Errors outside these kinds (bugs, a NaN loss, a dead peer) keep their traceback.
"""

from __future__ import annotations

import argparse
import difflib
import glob
import importlib.util
import inspect
import os
import pathlib
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from smartvlm_jax import variants

# ValueError covers MalformedRowError and config checks; OSError covers FileNotFoundError, FileExistsError,
# NotADirectoryError and BadImageError; KeyError a missing checkpoint entry.
INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, KeyError)
TRACEBACK_HELP = "show Python's traceback for input errors instead of one line"


def platforms_present(tpu_installed: bool, cuda_installed: bool, tpu_attached: bool, gpu_attached: bool):
    """The ``JAX_PLATFORMS`` value that leaves out each installed accelerator plugin whose hardware is absent
    ("cpu", "cuda,cpu" or "tpu,cpu"), or None where nothing need be left out (JAX's own choice stands)."""
    keep = [
        name
        for name, installed, attached in (
            ("cuda", cuda_installed, gpu_attached),
            ("tpu", tpu_installed, tpu_attached),
        )
        if installed and attached
    ]
    absent = (tpu_installed and not tpu_attached) or (cuda_installed and not gpu_attached)
    return ",".join([*keep, "cpu"]) if absent else None


def keep_jax_off_absent_accelerators() -> None:
    """Where an accelerator's plugin is installed on a machine without that accelerator, JAX would still
    start it at its first use: libtpu (the ``[tpu-compile]`` extra) writes errors to stderr that no log
    routing catches, and the CUDA plugin (``[gpu-compile]``) logs "Jax plugin configuration error" with a
    traceback ("Unable to load CUDA"). Leave such a platform out of ``JAX_PLATFORMS`` (a present GPU or TPU
    stays in). Nothing changes where ``JAX_PLATFORMS`` is set or no plugin misses its hardware. A TPU is
    attached when ``/dev/accel*`` or ``/dev/vfio/<n>`` exists, an NVIDIA GPU when the driver's
    ``/dev/nvidiactl`` or ``/proc/driver/nvidia`` does. Call before JAX is first used.

    jaxlib's import itself still prints "cudart_stub.cc:31] Could not find cuda drivers" (INFO, from C++
    before any Python runs) where the CUDA plugin is installed without a driver."""
    if os.environ.get("JAX_PLATFORMS"):
        return
    platforms = platforms_present(
        tpu_installed=importlib.util.find_spec("libtpu") is not None,
        cuda_installed=importlib.util.find_spec("jax_cuda12_plugin") is not None,
        tpu_attached=bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")),
        gpu_attached=os.path.exists("/dev/nvidiactl") or os.path.isdir("/proc/driver/nvidia"),
    )
    if platforms is None:
        return
    os.environ["JAX_PLATFORMS"] = platforms
    if "jax" in sys.modules:  # JAX read the variable when imported; its backends start at first use
        sys.modules["jax"].config.update("jax_platforms", platforms)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors are one line (no usage block) and name a mistyped option
    first, with the known option nearest to it: argparse itself reports a missing required option
    before an unrecognized one (``--workdr`` alone reads "the following arguments are required:
    --workdir"). ``--config.FIELD=...`` tokens, which evaluate and predict pass on
    (``parse_known_args``), are not options of the parser and not named."""

    def parse_known_args(self, args=None, namespace=None):
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        known = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
        for token in getattr(self, "_argv", []):
            name = token.split("=", 1)[0]
            if not name.startswith("--") or name == "--" or name.startswith("--config."):
                continue
            if not any(o.startswith(name) for o in known):  # (argparse takes unique prefixes)
                near = difflib.get_close_matches(name[2:], [o[2:] for o in known], n=1)  # "--" alike in all
                message = f"unrecognized arguments: {name}" + (f"; did you mean --{near[0]}?" if near else "")
                break
        # one line, as every other mistake (argparse would print its usage block first); status 2: a usage
        # mistake, as argparse and absl give it (--help prints the usage)
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    """argparse ``type`` for counts: an int >= 1, or argparse's usage error naming the flag."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def prog(module: str) -> str:
    """The program name a usage line shows: the console script's name when run as one
    (``smartvlm-predict``), else ``python -m <module>``."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if name.startswith("smartvlm-"):
        return name
    return f"python -m {module}"


def puzzle_ids_flag(values: Sequence[str] | str | None, flag: str) -> str | list[int]:
    """A ``--puzzles`` value as every command takes it: "all" (also for None), or ids separated by commas
    (or given as several arguments: ``1,2,3`` = ``1 2 3``). ValueError naming ``flag`` otherwise."""
    if values is None:
        return "all"
    text = ",".join([values] if isinstance(values, str) else values)
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if parts == ["all"]:
        return "all"
    if not parts or not all(p.isdigit() for p in parts):
        raise ValueError(f"{flag} takes all or puzzle ids separated by commas (1,2,3), not {text!r}")
    return [int(p) for p in parts]


def run(
    fn: Callable[[], object],
    traceback: bool = False,
    *,
    also: tuple[type[BaseException], ...] = (),
    prefix: str = "",
) -> int:
    """Calls ``fn``; 0, or 1 after printing ``error: <prefix><message>`` for an input error (one of
    :data:`INPUT_ERRORS` or ``also``), which ``traceback`` re-raises instead."""
    try:
        fn()
    except (*INPUT_ERRORS, *also) as e:
        if traceback:
            raise
        message = str(e) if not isinstance(e, KeyError) else f"missing {e}"
        print(f"error: {prefix}{message}", file=sys.stderr)
        return 1
    return 0


def config_file_of(argv: Sequence[str]) -> str | None:
    """The file of ``--config FILE`` / ``--config=FILE[:ARGS]`` in ``argv``, before absl parses it."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1].split(":", 1)[0]
        if arg.startswith("--config="):
            return arg.removeprefix("--config=").split(":", 1)[0]
    return None


def config_import_root(config_file: str) -> str | None:
    """The folder above the package that holds ``config_file`` (``configs/smoke.py`` -> the checkout), or
    None when its folder is no package. The configs import their siblings as ``configs.NAME``: that works
    from any working directory, and from the console script, whose ``sys.path`` lacks the working directory.
    """
    folder = os.path.dirname(os.path.abspath(config_file))
    root = folder
    while os.path.isfile(os.path.join(root, "__init__.py")):
        root = os.path.dirname(root)
    return root if root != folder else None


def make_configs_importable(argv: Sequence[str]) -> None:
    """Put the folder above ``--config``'s package on ``sys.path`` (see :func:`config_import_root`)."""
    config_file = config_file_of(argv[1:])
    root = config_import_root(config_file) if config_file else None
    if root and root not in sys.path:
        sys.path.insert(0, root)


# ------------------------------------------------------------------------------ --config and its fields


def config_flag_of(argv: Sequence[str]) -> str | None:
    """The value of ``--config FILE[:ARG]`` / ``--config=FILE[:ARG]`` in ``argv``, as given."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.removeprefix("--config=")
    return None


def config_overrides(argv: Sequence[str]) -> list[str]:
    """The field paths of every ``--config.FIELD[=VALUE]`` / ``--noconfig.FIELD`` in ``argv``, in order."""
    out = []
    for arg in argv:
        for prefix in ("--config.", "--noconfig."):
            if arg.startswith(prefix):
                out.append(arg.removeprefix(prefix).split("=", 1)[0])
    return out


def missing_config_file(path: str) -> str:
    """The one line for a ``--config`` file that does not exist, with the likeliest file meant: a sibling
    of a similar name, or the same relative path from the checkout this package runs from."""
    where = "" if os.path.isabs(path) else f" (relative to the working directory {os.getcwd()})"
    message = f"--config {path}: no such file{where}"
    folder = os.path.dirname(path) or "."
    if os.path.isdir(folder):
        names = sorted(n for n in os.listdir(folder) if n.endswith(".py") and n != "__init__.py")
        close = difflib.get_close_matches(os.path.basename(path), names, n=1)
        if close:
            return f"{message}; did you mean --config {os.path.join(os.path.dirname(path), close[0])}?"
    checkout = pathlib.Path(__file__).resolve().parents[1] / path
    if not os.path.isabs(path) and checkout.is_file():
        return f"{message}; did you mean --config {checkout}?"
    return message


def load_config(spec: str) -> Any:
    """``get_config([ARG])`` of ``FILE[:ARG]``, loaded as config_flags loads it; errors (one line) name
    ``--config``: FileNotFoundError for a missing file, ValueError for what the config's code refused."""
    path, colon, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(missing_config_file(path))
    module_spec = importlib.util.spec_from_file_location("smartvlm_jax_checked_config", path)
    module = importlib.util.module_from_spec(module_spec)
    get_config = None
    try:
        module_spec.loader.exec_module(module)
        get_config = getattr(module, "get_config", None)
        if callable(get_config) and not (colon and not inspect.signature(get_config).parameters):
            return get_config(arg) if colon else get_config()
    except ValueError as e:  # a config's own refusal (an unknown ARG) says what to do: its words
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not message.startswith(path):
            message = f"{spec}: {message}"
        raise ValueError(f"--config {message}") from e
    except SyntaxError as e:  # the config file is not Python: where and what, not the loader's traceback
        raise ValueError(f"--config {spec}: {e.filename or path}:{e.lineno}: SyntaxError: {e.msg}") from None
    except Exception as e:  # anything else the config's code raised: its line, type and words
        lines = [
            f.lineno
            for f in traceback.extract_tb(e.__traceback__)
            if os.path.abspath(f.filename) == os.path.abspath(path)
        ]
        where = f"{path}:{lines[-1]}: " if lines else ""
        words = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"--config {spec}: {where}{type(e).__name__}: {words}".rstrip(": ")) from e
    if not callable(get_config):
        raise ValueError(f"--config {spec}: {path} defines no get_config(); is it a config file?")
    # ARG given to a get_config() without parameters: Python's "takes 0 positional arguments" names no fix
    raise ValueError(
        f"--config {spec}: {path} has no named variants (its get_config() takes no argument); "
        f"use --config {path}"
    )


def check_field(config: Any, field: str, label: str) -> None:
    """ValueError naming ``--config.FIELD`` and the likeliest field meant when ``config`` has no ``field``
    (a dotted path); ``label`` names the config in the message."""
    node, done = config, []
    for part in field.split("."):
        key = part.split("[", 1)[0]
        if not hasattr(node, "keys"):  # a leaf's own structure (a tuple's index...): config_flags checks it
            return
        if key not in node:
            where = ".".join(done)
            known = sorted(node.keys())
            close = difflib.get_close_matches(key, known, n=1)
            if done == ["model"] and variants.RENAMED_FIELDS.get(key) in known:
                close = [variants.RENAMED_FIELDS[key]]  # an older name of the head's field
            hint = (
                f"did you mean --config.{'.'.join([*done, close[0]])}?"
                if close
                else f"{'its fields under ' + where if where else 'its fields'}: {', '.join(known)}"
            )
            raise ValueError(f"--config.{field}: {label} has no field {'.'.join([*done, key])}; {hint}")
        node, done = node[key], [*done, key]


BASE_CONFIG = "configs.smarter"  # every run config's fields: the paper's model and recipe


def check_known_fields(config: Any, spec: str, skip: Sequence[str] = ()) -> None:
    """ValueError naming a field the ``--config`` file set that no run config has (``c.num_epocs = 2`` in
    a config file makes a new field, which nothing reads), with the likeliest meant; fields under ``skip``
    (a sweep's own) are free. Nothing is checked when the base config (:data:`BASE_CONFIG`, in the
    checkout) is not importable."""
    try:
        base = importlib.import_module(BASE_CONFIG).get_config()
    except ImportError:
        return

    def walk(node: Any, known: Any, path: tuple[str, ...]) -> None:
        if not (hasattr(node, "keys") and hasattr(known, "keys")):
            return  # a leaf, or a field whose value is free-form
        for key in node.keys():
            if not path and key in skip:
                continue
            if key not in known:
                field = ".".join([*path, key])
                close = difflib.get_close_matches(key, list(known.keys()), n=1)
                hint = f"; did you mean {'.'.join([*path, close[0]])}?" if close else ""
                raise ValueError(f"--config {spec} sets {field}, which no run config has{hint}")
            walk(node[key], known[key], (*path, key))

    walk(config, base, ())


def check_config_flags(
    argv: Sequence[str],
    other: tuple[Sequence[str], str] | None = None,
    needs: tuple[Sequence[str], str] | None = None,
) -> None:
    """Before absl parses ``argv``: the ``--config`` file loads, and every ``--config.FIELD`` names a field
    it has. ``other`` is (fields, command): fields of another command's configs that this one refuses, in
    a config or as a flag, pointing at that command (the sweep's own fields, given to the training
    command). ``needs`` is (fields, advice): fields the config must have (a sweep's). Raises
    FileNotFoundError or ValueError, one line naming the flag and the likeliest fix."""
    spec = config_flag_of(argv)
    if spec is None:
        return  # absl reports the missing required flag
    config = load_config(spec)
    needed, advice = needs or ((), "")
    missing = [f for f in needed if not (hasattr(config, "keys") and f in config)]
    if missing:
        raise ValueError(f"--config {spec} has no {', '.join(missing)}: {advice}")
    fields, command = other or ((), "")
    present = [f for f in fields if hasattr(config, "keys") and f in config]
    if present:
        raise ValueError(
            f"--config {spec} is a config of {command} (it has {', '.join(present)}): "
            f"run {command} --config {spec}"
        )
    check_known_fields(config, spec, skip=(*fields, *needed))
    for field in config_overrides(argv):
        if field.split(".", 1)[0].split("[", 1)[0] in fields:
            raise ValueError(
                f"--config.{field} is a field of {command}'s configs, not of this command's: run {command}"
            )
        check_field(config, field, spec.partition(":")[0])


def parse_absl_flags(
    argv: Sequence[str],
    other: tuple[Sequence[str], str] | None = None,
    needs: tuple[Sequence[str], str] | None = None,
) -> list[str]:
    """absl ``flags_parser`` for the config-file commands (``app.run(..., flags_parser=...)``): checks
    ``--config`` and its fields first (:func:`check_config_flags`), then parses; a mistake in a flag
    prints one ``error: ...`` line and exits with status 1 (with ``--traceback``: Python's traceback).
    ``other``, ``needs``: as :func:`check_config_flags` takes them."""
    from absl import flags

    try:
        check_config_flags(argv, other, needs)
        return flags.FLAGS(list(argv))
    except (flags.Error, *INPUT_ERRORS) as e:
        if "--traceback" in argv or "--traceback=true" in argv:
            raise
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        print(f"error: {lines[0] if lines else type(e).__name__}", file=sys.stderr)
        sys.exit(1)
