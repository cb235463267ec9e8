"""Content digests that key what runs share (the feature store): JSON values, files and directories.

Every digest is a SHA-256 hex string. Large files are hashed once and their digest remembered in a memo
folder, keyed by the file's identity on disk (path, size, mtime_ns, ctime_ns, inode): hashing a tower's
weights takes seconds (docs/performance.md), which a sweep would pay for every run. A file rewritten in
place changes its mtime and ctime, so the memo never hands back the digest of older contents (on
filesystems with a coarse clock, a rewrite within the same tick of the same size could; files below
``MEMO_MIN_BYTES`` are always hashed in full, so small config and tokenizer files never depend on it).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Callable

from smartvlm_jax import fileio

MEMO_MIN_BYTES = 16 << 20  # smaller files hash faster than the memo is worth: always hashed in full


def digest_json(value: object) -> str:
    """SHA-256 of ``value`` as canonical JSON (sorted keys, no whitespace); TypeError if not JSON-able."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: str | os.PathLike, memo_dir: str | os.PathLike | None = None) -> str:
    """SHA-256 of a file's bytes; with ``memo_dir``, files of ``MEMO_MIN_BYTES`` or more are hashed once
    per identity (path, size, mtime_ns, ctime_ns, inode) and their digest kept in ``memo_dir`` (created).

    Raises OSError (FileNotFoundError, ...) naming the file when it cannot be read.
    """
    path = pathlib.Path(path).absolute()
    stat = path.stat()
    memo = None
    if memo_dir is not None and stat.st_size >= MEMO_MIN_BYTES:
        identity = [str(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
        memo = pathlib.Path(memo_dir) / digest_json(identity)
        try:
            return memo.read_text().strip()
        except FileNotFoundError:
            pass
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if memo is not None:
        memo.parent.mkdir(parents=True, exist_ok=True)
        fileio.write_text(memo, digest)  # concurrent writers write the same digest; a reader sees one whole
    return digest


def directory_digest(
    path: str | os.PathLike,
    memo_dir: str | os.PathLike | None = None,
    skip: Callable[[pathlib.PurePosixPath], bool] = lambda _: False,
) -> str:
    """SHA-256 over every file under ``path`` (relative name and :func:`file_digest`), in sorted order;
    files for which ``skip(relative path)`` is true are left out. FileNotFoundError when ``path`` is not a
    directory."""
    root = pathlib.Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    entries = []
    for file in files:
        name = pathlib.PurePosixPath(file.relative_to(root).as_posix())
        if not skip(name):
            entries.append([str(name), file_digest(file, memo_dir)])
    return digest_json(entries)
