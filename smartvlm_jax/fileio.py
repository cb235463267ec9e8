"""Atomic writes: a file or directory is built under a temporary sibling name, then renamed into place.

A reader (or a run resumed after a kill) sees either the whole new content or none of it, never a truncated
file: ``os.replace`` within one directory is atomic on POSIX file systems. The temporary name carries the
process and thread ids, so concurrent writers of the same path do not write into each other's file; the
last rename wins. Standard library only (layer 1 of docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
import threading
from collections.abc import Iterator
from typing import IO, Any


def temporary_sibling(path: str | os.PathLike) -> pathlib.Path:
    """``<dir>/<name>.<pid>-<thread id>.tmp``: where :func:`atomic_path` and :func:`atomic_open` write
    ``path`` first."""
    path = pathlib.Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yields the temporary sibling of ``path`` for a writer that takes a file name (a compiler's ``-o``,
    ``safetensors.save_file``); on leaving without an exception it is renamed to ``path`` (replacing it),
    on an exception removed if it was written."""
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open(temporary sibling, mode, **kwargs)``; on leaving without an exception the file is closed and
    renamed to ``path`` (replacing it), on an exception removed. ``mode`` is "w" or "wb" (plus open's other
    arguments, e.g. ``newline``, ``encoding``). ValueError for a mode that does not write a whole file."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a whole file: mode {mode!r} is not 'w' or 'wb'")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json(path: str | os.PathLike, value: Any, indent: int | None = 2, **dumps_kwargs: Any) -> None:
    """Write ``json.dumps(value, indent=indent, **dumps_kwargs)`` and a newline to ``path`` atomically
    (e.g. ``allow_nan=False``: ValueError on NaN, before anything is written)."""
    write_text(path, json.dumps(value, indent=indent, **dumps_kwargs) + "\n")


@contextlib.contextmanager
def staged_dir(path: str | os.PathLike, replace: bool = False) -> Iterator[pathlib.Path]:
    """Yields a new empty directory beside ``path``; on leaving without an exception it is renamed to
    ``path``, on an exception removed with what it holds.

    ``path`` may be absent (its parent is created) or an empty directory, which the result replaces.
    FileExistsError naming ``path`` when it is a file or a directory with something in it (checked before
    the caller writes anything), unless ``replace``: then what is there is removed just before the rename,
    the one moment without either.
    """
    path = pathlib.Path(path).absolute()
    if not replace and path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path} exists and is not an empty directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    try:
        yield staging
        if replace and path.is_dir():
            shutil.rmtree(path)
        elif replace and path.exists():
            path.unlink()
        elif path.is_dir():
            path.rmdir()  # empty (checked above; fails if it no longer is): a rename onto it needs it gone
        os.rename(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
