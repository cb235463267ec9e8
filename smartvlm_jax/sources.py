"""What a run read, by content: ``sources.json`` beside a run's ``config.json``, and in each model dir.

``config.json`` names the data folder and the towers by path (inside the workdir relative to it, so the
workdir can move); a path names a place, not what is there. ``sources.json`` holds a digest of each::

    {"data.root": {"path": "/data/SMART101-release-v1/SMART101-Data", "digest": "<sha256>"},
     "towers.dinov2": {"path": "/models/dinov2-base", "digest": "<sha256>"},
     "towers.siglip": {"path": "/models/siglip-so400m", "digest": "<sha256>"}}

- the data root's digest is the fingerprint the data build keys its dataset by
  (``smart101.rows_fingerprint`` of the run's puzzles: every CSV field, each image's name, size and
  mtime; ~1 s for the release's 200k images, no image read);
- a tower's is the digest the feature store keys its columns by (``towers.content_digest``: every file,
  the tokenizer included; large files hashed once per identity and remembered in the per-user cache).

A workdir's ``sources.json`` records the run's data root and towers; a model dir's (``best_model/``)
records the towers its head was trained on. Where they differ from what a command is given:

- **towers: refused** (:class:`SourceChangedError`, one line naming both directories), unless allowed
  (``--allow-other-towers``; ``Predictor.load(allow_other_towers=True)``; a resumed run: no override, as
  for another head). The digest is of the towers' bytes, so a difference is real, and a head given
  other features answers wrongly without any error.
- **data root: a warning** (one line). Its digest is of names, sizes and mtimes (what is cheap for 200k
  images), so a copy that did not keep mtimes (plain ``cp``) differs though its bytes are the same; and
  the data build already rebuilds from changed rows. The line says the metrics are of the rows as they
  are now.

Dirs written before ``sources.json`` existed have none: nothing is compared.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from collections.abc import Iterable, Mapping
from typing import Any

from smartvlm_jax import fileio, variants
from smartvlm_jax.data import smart101
from smartvlm_jax.towers import store as tower_store
from smartvlm_jax.workdir import SOURCES_FILE, user_cache_dir

log = logging.getLogger(__name__)

FILE = SOURCES_FILE
DATA_ROOT = "data.root"
SHOWN = 12  # hex digits of a digest a message shows


class SourceChangedError(ValueError):
    """A tower differs from the one a head was trained with; ``detail`` is the message without its last
    clause (``how``: what allows it anyway), so a command can name its own flag (:meth:`allowed_by`)."""

    def __init__(self, detail: str, how: str) -> None:
        super().__init__(f"{detail}; {how}")
        self.detail = detail

    def allowed_by(self, how: str) -> SourceChangedError:
        """The same refusal ending in ``how`` (e.g. the CLI's flag instead of the API's argument)."""
        return SourceChangedError(self.detail, how)


def tower_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a tower directory's contents (``towers.content_digest``; large files' digests kept in
    the per-user cache). FileNotFoundError when ``path`` is not a directory."""
    return tower_store.content_digest(path, user_cache_dir("digests"))


def data_digest(root: str | os.PathLike, puzzle_ids: str | Iterable[int]) -> str:
    """SHA-256 of the rows of ``puzzle_ids`` ("all", "1,2,3" or ints) under ``root``
    (``smart101.rows_fingerprint``). FileNotFoundError naming a missing folder or image."""
    ids = puzzle_ids if isinstance(puzzle_ids, str) else ",".join(str(int(p)) for p in puzzle_ids)
    return smart101.rows_fingerprint(smart101.read_rows(root, ids))


def run_sources(data: Mapping[str, Any], towers: Mapping[str, Any], variant: str) -> dict[str, dict]:
    """{field: {"path", "digest"}} of a resolved run config's data root (``data``: its ``root`` and
    ``puzzle_ids``) and of the towers its ``variant`` reads (``towers``: name -> directory)."""
    out = {DATA_ROOT: entry(data["root"], data_digest(data["root"], data["puzzle_ids"]))}
    for name in variants.get(variant).towers:
        out[f"towers.{name}"] = entry(towers[name], tower_digest(towers[name]))
    return out


def entry(path: str | os.PathLike, digest: str) -> dict[str, str]:
    return {"path": str(pathlib.Path(path).absolute()), "digest": digest}


def towers_only(sources: Mapping[str, dict]) -> dict[str, dict]:
    """The tower entries of ``sources``: what a model dir records."""
    return {k: dict(v) for k, v in sources.items() if k.startswith("towers.")}


def write(
    folder: str | os.PathLike, sources: Mapping[str, dict], base: str | os.PathLike | None = None
) -> pathlib.Path:
    """``<folder>/sources.json`` (written atomically); returns its path. Paths under ``base`` (a workdir)
    are stored relative to it, as ``config.json`` stores them, so the workdir can move."""
    out = {}
    for field, item in sources.items():
        path = pathlib.Path(item["path"])
        if base is not None and path.is_relative_to(pathlib.Path(base).absolute()):
            path = path.relative_to(pathlib.Path(base).absolute())
        out[field] = {**item, "path": str(path)}
    path = pathlib.Path(folder) / FILE
    fileio.write_json(path, out, indent=2)
    return path


def read(folder: str | os.PathLike, base: str | os.PathLike | None = None) -> dict[str, dict]:
    """``<folder>/sources.json`` as a dict, relative paths made absolute under ``base`` (default:
    ``folder``); {} when there is none (written before it existed). ValueError naming the file when it
    is not a JSON object of {"path", "digest"} entries."""
    path = pathlib.Path(folder) / FILE
    try:
        recorded = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(recorded, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("digest"), str) for v in recorded.values()
    ):
        raise ValueError(f"{path} holds no {{field: {{'path', 'digest'}}}} object")
    base = pathlib.Path(folder if base is None else base).absolute()
    return {field: {**item, "path": str(base / item.get("path", ""))} for field, item in recorded.items()}


def check_run(
    recorded_in: str | os.PathLike,
    current: Mapping[str, dict],
    *,
    consequence: str,
    refuse_how: str | None,
) -> None:
    """Compare ``current`` (:func:`run_sources` of what this command reads) with the digests in
    ``<recorded_in>/sources.json``.

    A changed data root is logged as one warning ending in ``consequence``; a changed tower raises
    :class:`SourceChangedError` ending in ``refuse_how`` (what to do), or is one warning when
    ``refuse_how`` is None (allowed). Fields recorded but not read now, or read but not recorded, are
    not compared.
    """
    recorded = read(recorded_in)
    file = pathlib.Path(recorded_in) / FILE
    for field, now in current.items():
        then = recorded.get(field)
        if then is None or then["digest"] == now["digest"]:
            continue
        digests = f"digest {now['digest'][:SHOWN]}, recorded {then['digest'][:SHOWN]} in {file}"
        if field == DATA_ROOT:
            log.warning(
                "%s %s: its rows or images changed since the run read them (%s); %s",
                field,
                now["path"],
                digests,
                consequence,
            )
            continue
        detail = (
            f"{field} {now['path']} holds other contents than the tower the run was trained with, "
            f"{then['path']} ({digests})"
        )
        if refuse_how is None:
            log.warning("%s; %s", detail, consequence)
        else:
            raise SourceChangedError(detail, refuse_how)


def check_model_towers(
    model_dir: str | os.PathLike,
    given: Mapping[str, str | os.PathLike],
    *,
    allow: bool = False,
    how: str = "pass allow_other_towers=True to answer anyway",
) -> None:
    """Refuse towers whose contents differ from those the head in ``model_dir`` was trained with (its
    ``sources.json``; none recorded: nothing compared). ``given``: kind ("dinov2", ...) -> directory.

    Raises :class:`SourceChangedError` naming the model dir, the recorded and the given directory and
    ending in ``how``; with ``allow`` it is one warning instead.
    """
    recorded = towers_only(read(model_dir))
    for kind, directory in given.items():
        then = recorded.get(f"towers.{kind}")
        if then is None:
            continue
        digest = tower_digest(directory)
        if digest == then["digest"]:
            continue
        detail = (
            f"{model_dir} was trained with towers.{kind} {then['path']} (digest {then['digest'][:SHOWN]}), "
            f"but {pathlib.Path(directory).absolute()} holds other contents (digest {digest[:SHOWN]})"
        )
        if not allow:
            raise SourceChangedError(detail, how)
        log.warning("%s; answering anyway (allowed)", detail)
