"""SMART-101 on disk: rows, answer values, answer classes, splits, skill types and images.

Everything here follows SPEC sections 1-3 (the reference `smarter-vlm/smarter` reader, `utils.get_val`,
`utils.get_puzzle_class_info` and `SMART_Data.split_data`/`split_puzzles`). It is plain Python over the
released folder: the TFDS builder, the grain pipeline and the metrics all take their facts from here, so
that a label means the same thing in every stage.
"""

from __future__ import annotations

import codecs
import collections
import csv
import dataclasses
import functools
import hashlib
import io
import json
import logging
import os
import pathlib
from collections.abc import Callable, Iterable, Mapping, Sequence

import ml_collections
import numpy as np
from PIL import Image

from smartvlm_jax import assets, images, puzzles

log = logging.getLogger(__name__)

OPTION_LETTERS: tuple[str, ...] = ("A", "B", "C", "D", "E")
# Shorter image side after the reference's first resize (torchvision Resize(224) on a PIL image).
IMAGE_SIDE = 224
# Pad value of positions 1..K-1 of an ordinary (non-sequence) puzzle's label: the reference's
# `answer = np.zeros(MAX_DECODE_STEPS)` leaves them 0, and no loss or metric reads them.
ORDINARY_PAD = 0
# Pad values of the sequence puzzles (SPEC section 2); 63 pads with C_63 - 1, computed from the data.
SEQUENCE_PAD: Mapping[int, int] = {16: 26, 18: 5, 35: 5, 39: 26, 100: 26}
# Fixed numbers of classes of the sequence puzzles; 63 is data-dependent (max list entry + 1).
FIXED_NUM_CLASSES: Mapping[int, int] = {16: 27, 39: 27, 100: 27, 18: 6, 35: 6}
# Puzzle 58: "<sign><digit>", value 10 * sign_code + digit.
SIGN_CODES: Mapping[str, int] = {"+": 1, "-": 2, "x": 3, "/": 4}
# Suffixes stripped from ordinary answers, in the reference's order ("hours" before "hour").
UNIT_SUFFIXES: tuple[str, ...] = (" hours", " hour", " cm", " km")
# The release's known misnamed CSV: folder 62 holds puzzle_63.csv.
MISNAMED_CSV: Mapping[int, str] = {62: "puzzle_63.csv"}
REQUIRED_COLUMNS: tuple[str, ...] = ("id", "Question", "image", *OPTION_LETTERS, "Answer")

Label = tuple[int, ...]


class MalformedRowError(ValueError):
    """A CSV row that cannot be read: missing column, bad answer letter, unparseable answer value."""


class BadImageError(OSError):
    """An image that is missing or cannot be decoded; the message names the file and the CSV row."""


@dataclasses.dataclass(frozen=True)
class Row:
    """One puzzle instance of the release, with its answer encoded as the heads predict it.

    `label` and each entry of `option_values` are K = 10 ints: a sequence puzzle's list padded with its
    pad value (SEQUENCE_PAD, or C_63 - 1 for puzzle 63); an ordinary puzzle's value at position 0 and
    ORDINARY_PAD elsewhere.
    """

    puzzle_id: int
    instance_id: int
    row_index: int
    question: str
    image_path: str
    options: tuple[str, str, str, str, str]
    answer_letter: str
    answer_index: int
    label: Label
    option_values: tuple[Label, Label, Label, Label, Label]


def label_arrays(rows: Iterable[Row]) -> dict[str, np.ndarray]:
    """The answers of ``rows`` as the metrics take them (``metrics.evaluate_split``): "labels" int
    [N, K], "puzzle_ids" int [N], "option_values" int [N, 5, K], "answer_index" int [N] (int64)."""
    rows = list(rows)
    return {
        "labels": np.asarray([r.label for r in rows], np.int64).reshape(len(rows), puzzles.NUM_DECODE_STEPS),
        "puzzle_ids": np.asarray([r.puzzle_id for r in rows], np.int64),
        "option_values": np.asarray([r.option_values for r in rows], np.int64).reshape(
            len(rows), len(OPTION_LETTERS), puzzles.NUM_DECODE_STEPS
        ),
        "answer_index": np.asarray([r.answer_index for r in rows], np.int64),
    }


@functools.cache
def icon_classes() -> tuple[str, ...]:
    """Puzzle 1's icon class names, in the order that defines their answer values."""
    lines = assets.path("icon-classes.txt").read_text().splitlines()
    return tuple(line.strip() for line in lines)


def _split_list(text: str, words: Sequence[str], drop: Sequence[str] = ()) -> list[str]:
    """Split a list answer such as "1, 2 and 3": words become commas, spaces and `drop` words vanish."""
    for word in words:
        text = text.replace(word, ",")
    for word in drop:
        text = text.replace(word, "")
    text = text.replace(" ", "")
    # Empty parts come from "1, 2, and 3"; the reference removes them with a ", ," replacement.
    return [part for part in text.split(",") if part]


def _pad(values: list[int], pad: int, text: str) -> list[int]:
    if len(values) > puzzles.NUM_DECODE_STEPS:
        raise ValueError(f"{text!r} has {len(values)} entries, more than {puzzles.NUM_DECODE_STEPS}")
    return values + [pad] * (puzzles.NUM_DECODE_STEPS - len(values))


def sequence_values(puzzle_id: int, text: str) -> list[int]:
    """The unpadded list value of a sequence puzzle's answer text (SPEC section 2)."""
    text = text.strip()
    if puzzle_id == 16:
        return [int(v) for v in _split_list(text, ["and"])]
    if puzzle_id == 18:
        return [int(v) for v in text.split("-")]
    if puzzle_id == 35:
        return [_letter_value(v) for v in _split_list(text, ["and"])]
    if puzzle_id in (39, 100):
        return [_letter_value(c) for c in text]
    if puzzle_id == 63:
        return [int(v) for v in _split_list(text, ["and", "or"], drop=["only"])]
    raise ValueError(f"puzzle {puzzle_id} is not a sequence puzzle")


def _letter_value(letter: str) -> int:
    if len(letter) != 1:
        raise ValueError(f"{letter!r} is not a single letter")
    return ord(letter) - ord("A")


def _scalar_value(puzzle_id: int, text: str) -> int:
    text = text.strip()
    if puzzle_id == 58:
        if not text or text[0] not in SIGN_CODES:
            raise ValueError(f"{text!r} does not start with one of {''.join(SIGN_CODES)}")
        return 10 * SIGN_CODES[text[0]] + int(text[1:])
    if puzzle_id == 25:
        hour = int(text.replace(":00 AM", "").replace(":00 PM", ""))
        return hour + 12 if "PM" in text else hour
    try:
        return int(text)
    except ValueError:
        pass
    if len(text) == 1:
        return _letter_value(text)
    for suffix in UNIT_SUFFIXES:
        text = text.replace(suffix, "")
    text = text.replace("Impossible", "0")
    if puzzle_id == 1:
        name = "_".join(text.split(" "))
        classes = icon_classes()
        for candidate in (name, name + "s"):
            if candidate in classes:
                return classes.index(candidate)
    return int(text)


def answer_value(puzzle_id: int, text: str, *, pad_63: int = -1) -> list[int]:
    """The value of option text `text` of puzzle `puzzle_id`, as K = 10 ints (SPEC section 2).

    Puzzle 63 pads with C_63 - 1, which depends on the whole CSV: pass it as `pad_63`; by default it pads
    with -1, which `read_puzzle` replaces by C_63 - 1 once it knows C_63. Raises ValueError if the text
    has no value.
    """
    if puzzles.is_sequence(puzzle_id):
        pad = pad_63 if puzzle_id == 63 else SEQUENCE_PAD[puzzle_id]
        return _pad(sequence_values(puzzle_id, text), pad, text)
    return _pad([_scalar_value(puzzle_id, text)], ORDINARY_PAD, text)


def _class_count(puzzle_id: int, labels: Iterable[Label]) -> int:
    if puzzle_id in FIXED_NUM_CLASSES:
        return FIXED_NUM_CLASSES[puzzle_id]
    labels = list(labels)
    if not labels:
        raise ValueError(f"puzzle {puzzle_id} has no rows to count its classes")
    if puzzle_id == 63:
        return max(v for label in labels for v in label if v >= 0) + 1
    return max(label[0] for label in labels) + 1


def num_classes(rows: Iterable[Row]) -> dict[int, int]:
    """C_p for every puzzle among `rows`: max label + 1, except the fixed sequence puzzles (SPEC section 2).

    Pass all rows of a puzzle's CSV (as `read_puzzle` returns them), not a split: the reference counts
    over the whole CSV.
    """
    by_puzzle: dict[int, list[Label]] = collections.defaultdict(list)
    for row in rows:
        by_puzzle[row.puzzle_id].append(row.label)
    return {pid: _class_count(pid, labels) for pid, labels in sorted(by_puzzle.items())}


def puzzle_csv_path(root: str | os.PathLike, puzzle_id: int) -> str:
    """The CSV of a puzzle: `<root>/<pid>/puzzle_<pid>.csv`, or the release's misnamed 62/puzzle_63.csv.

    Raises FileNotFoundError listing the puzzle ids found under `root` if the folder is missing.
    """
    folder = os.path.join(root, str(puzzle_id))
    if not os.path.isdir(folder):
        found = found_puzzle_ids(root)
        raise FileNotFoundError(
            f"puzzle folder {folder} is missing; puzzle ids found under {root}: {found or 'none'}"
        )
    path = os.path.join(folder, f"puzzle_{puzzle_id}.csv")
    if not os.path.exists(path) and puzzle_id in MISNAMED_CSV:
        path = os.path.join(folder, MISNAMED_CSV[puzzle_id])
    if not os.path.exists(path):
        files = sorted(os.listdir(folder))
        raise FileNotFoundError(f"{folder} has no puzzle_{puzzle_id}.csv (files: {files})")
    return path


def found_puzzle_ids(root: str | os.PathLike) -> list[int]:
    """The puzzle ids with a folder under `root`, sorted."""
    if not os.path.isdir(root):
        return []
    names = [n for n in os.listdir(root) if n.isdigit() and os.path.isdir(os.path.join(root, n))]
    return sorted(int(n) for n in names)


def resolve_puzzle_ids(root: str | os.PathLike, puzzle_ids: str | Sequence[int]) -> list[int]:
    """`"all"` -> the puzzle folders found under `root`; a list (or "1,2,3") -> those ids, sorted."""
    if isinstance(puzzle_ids, str):
        if puzzle_ids == "all":
            return found_puzzle_ids(root)
        puzzle_ids = [int(p) for p in puzzle_ids.split(",") if p.strip()]
    return sorted({int(p) for p in puzzle_ids})


def read_puzzle(root: str | os.PathLike, puzzle_id: int) -> list[Row]:
    """All rows of one puzzle's CSV, in file order, with labels and option values.

    A row with an empty `A` has options "A".."E" (the reference's rule). Raises MalformedRowError with
    `path:line` and the offending text for a missing column, an answer letter outside A-E, or an option
    without a value. Images are not opened here (see `check_image`).
    """
    path = puzzle_csv_path(root, puzzle_id)
    img_dir = os.path.join(root, str(puzzle_id), "img")
    parsed = []
    with io.StringIO(decode_csv(path), newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise MalformedRowError(f"{path}:1: missing columns {missing} in header {reader.fieldnames}")
        for row_index, record in enumerate(reader):
            where = f"{path}:{reader.line_num}"
            parsed.append(_parse_record(puzzle_id, record, row_index, where, img_dir))
    if puzzle_id == 63 and parsed:
        # C_63 - 1 is the pad of puzzle 63, known only once every row is read.
        pad = _class_count(63, [p.label for p in parsed]) - 1
        fill = lambda label: tuple(pad if v == -1 else v for v in label)
        parsed = [
            dataclasses.replace(p, label=fill(p.label), option_values=tuple(fill(v) for v in p.option_values))
            for p in parsed
        ]
    return parsed


# Byte-order marks: Excel's "CSV UTF-8" starts with the UTF-8 one; "Unicode Text" is UTF-16 with its own.
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def decode_csv(path: str | os.PathLike) -> str:
    """The text of a puzzle CSV: UTF-8, with or without a byte-order mark, or UTF-16 with one; any line ends.

    Other encodings are refused rather than guessed (a Windows-1252 or Latin-1 file decodes as something
    under most 8-bit codecs, silently changing the text the towers read): raises MalformedRowError naming
    `path:line`, the column and the offending byte, e.g. a cp1252 dash (0x96) or a Latin-1 e-acute (0xe9).
    """
    data = pathlib.Path(path).read_bytes()
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(codec)
            except UnicodeDecodeError as e:
                raise _encoding_error(path, data, e, codec) from None
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise MalformedRowError(
            f"{path}:{line}: NUL bytes (UTF-16 without a byte-order mark?); re-save it as UTF-8"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _encoding_error(path, data, e, "utf-8") from None


def _encoding_error(path, data: bytes, error: UnicodeDecodeError, codec: str) -> MalformedRowError:
    line = data[: error.start].count(b"\n") + 1
    column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
    byte = data[error.start : error.start + 1].hex()
    return MalformedRowError(
        f"{path}:{line}: byte 0x{byte} at column {column} is not {codec} ({error.reason}); puzzle CSVs are "
        "read as UTF-8 (a byte-order mark is fine) or UTF-16 with one: re-save it as UTF-8"
    )


def _parse_record(puzzle_id: int, record: dict, row_index: int, where: str, img_dir: str) -> Row:
    if None in record or any(record.get(c) is None for c in REQUIRED_COLUMNS):
        raise MalformedRowError(f"{where}: wrong number of fields: {record}")
    options = [record[letter] for letter in OPTION_LETTERS]
    if not options[0]:
        options = list(OPTION_LETTERS)
    letter = record["Answer"].strip()
    if letter not in OPTION_LETTERS:
        raise MalformedRowError(f"{where}: answer {record['Answer']!r} is not one of A-E")
    try:
        instance_id = int(record["id"])
    except ValueError:
        raise MalformedRowError(f"{where}: id {record['id']!r} is not an integer") from None
    values = []
    for option_letter, text in zip(OPTION_LETTERS, options, strict=True):
        try:
            # An empty option (other than A) is worth its letter's index, as in the reference.
            values.append(tuple(answer_value(puzzle_id, text if text.strip() else option_letter)))
        except ValueError as e:
            raise MalformedRowError(f"{where}: option {option_letter} {text!r} has no value: {e}") from None
    index = OPTION_LETTERS.index(letter)
    if puzzles.is_sequence(puzzle_id) and min(v for v in values[index] if v != -1) < 0:
        raise MalformedRowError(f"{where}: answer {options[index]!r} has a negative value {values[index]}")
    return Row(
        puzzle_id=puzzle_id,
        instance_id=instance_id,
        row_index=row_index,
        question=record["Question"],
        image_path=os.path.join(img_dir, record["image"]),
        options=tuple(options),
        answer_letter=letter,
        answer_index=index,
        label=values[index],
        option_values=tuple(values),
    )


def read_rows(root: str | os.PathLike, puzzle_ids: str | Sequence[int] = "all") -> list[Row]:
    """The rows of several puzzles (sorted by puzzle id, then file order); `"all"` = every folder."""
    ids = resolve_puzzle_ids(root, puzzle_ids)
    if not ids:
        raise FileNotFoundError(f"no puzzle folders under {root}")
    return [row for pid in ids for row in read_puzzle(root, pid)]


def rows_fingerprint(rows: Iterable[Row]) -> str:
    """SHA-256 of ``rows`` in their order: every field read from the CSVs (puzzle and instance id, CSV row,
    question, image file name, options, answer, encoded label and option values) and each image file's
    size and mtime_ns (one ``stat`` per row, no image read: docs/performance.md has its cost).

    Keys what is derived from the rows (the built TFDS dataset, cached features), so a changed CSV row or
    image file gives a new fingerprint. The image's folder is left out, so a copied release that keeps its
    files' mtimes (``cp -p``, ``rsync -a``) keeps its fingerprint. Raises FileNotFoundError naming a
    missing image.
    """
    digest = hashlib.sha256()
    for row in rows:
        stat = os.stat(row.image_path)
        fields = [
            row.puzzle_id,
            row.instance_id,
            row.row_index,
            row.question,
            os.path.basename(row.image_path),
            list(row.options),
            row.answer_letter,
            row.answer_index,
            list(row.label),
            [list(v) for v in row.option_values],
            stat.st_size,
            stat.st_mtime_ns,
        ]
        digest.update(json.dumps(fields, ensure_ascii=True).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def check_image(row: Row) -> None:
    """Raise BadImageError naming the file and the CSV row if the row's image is missing or undecodable."""
    try:
        images.open_image(row.image_path)
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImageError(f"{csv_line(row)} (id {row.instance_id}): image {row.image_path}: {e}") from e


def csv_line(row: Row) -> str:
    """``path:line`` of ``row`` in its puzzle's CSV, as a malformed row is named (an editor's line: the
    header is line 1, and a quoted field may span lines); the puzzle and data row where the CSV is gone."""
    path = puzzle_csv_path(os.path.dirname(os.path.dirname(os.path.dirname(row.image_path))), row.puzzle_id)
    try:
        with io.StringIO(decode_csv(path), newline="") as f:
            reader = csv.DictReader(f)
            for index, _ in enumerate(reader):
                if index == row.row_index:
                    return f"{path}:{reader.line_num}"
    except (OSError, MalformedRowError):
        pass
    return f"puzzle {row.puzzle_id} CSV row {row.row_index}"


def drop_bad_images(
    rows: Sequence[Row],
    skip_bad_rows: bool,
    progress: Callable[[], None] | None = None,
    level: int = logging.WARNING,
) -> tuple[list[Row], list[str]]:
    """Rows whose images decode; a bad image raises, or with `skip_bad_rows` is skipped, counted, logged.

    `progress`, if given, is called after each row's image is checked (a progress bar's update). `level`:
    the log level of the skipped rows' lines (the dataset builder logs them at DEBUG: its caller reports
    them, so that each is shown once).
    """
    good, skipped = [], []
    for row in rows:
        try:
            check_image(row)
        except BadImageError as e:
            if not skip_bad_rows:
                raise
            log.log(level, "skipping bad row: %s", e)
            skipped.append(str(e))
            continue
        finally:
            if progress is not None:
                progress()
        good.append(row)
    if skipped:
        log.log(level, "skipped %d of %d rows with bad images", len(skipped), len(rows))
    return good, skipped


def resize_shorter_side(image: Image.Image | np.ndarray, side: int = IMAGE_SIDE) -> Image.Image:
    """RGB image with its shorter side resized to `side`, exactly as torchvision's Resize(side) on PIL.

    The image (any PIL mode, or an array) becomes 8-bit RGB by `images.to_rgb8` (the reference's
    `convert("RGB")` for 8-bit modes; 16-bit and float data scaled, not clipped). torchvision keeps the
    aspect ratio with int() truncation of the longer side and calls PIL's bilinear resize, which
    antialiases when shrinking.
    """
    image = images.to_rgb8(image, alpha="drop")
    w, h = image.size
    if w <= h:
        size = (side, int(side * h / w))
    else:
        size = (int(side * w / h), side)
    if size == (w, h):
        return image
    return image.resize(size, Image.BILINEAR)


def load_image(path: str | os.PathLike) -> Image.Image:
    """The reference's image: open (EXIF orientation applied, the pixel limit checked: `images.open_image`),
    convert to RGB, shorter side 224 (bilinear, antialiased)."""
    return resize_shorter_side(images.open_image(path))


# A data root's own description of its puzzles (`synthetic.write_dataset` writes one): id, type, name.
PUZZLE_INFO_CSV = "puzzle_info.csv"
PUZZLE_INFO_COLUMNS = ("id", "type", "name")


@dataclasses.dataclass(frozen=True)
class PuzzleInfo:
    """What the reports call a puzzle: its skill type (lower case: a skill class or "order") and its name
    ("" for none)."""

    type: str
    name: str = ""


def read_puzzle_info(root: str | os.PathLike | None = None) -> dict[int, PuzzleInfo]:
    """Skill type and name of each puzzle, by id: the data root's own `puzzle_info.csv` when it has one
    (synthetic families name themselves and their stand-in skill), else the release's types from the
    shipped SMART_info_v2.csv (no names), which also fills ids the root's file leaves out.

    Raises MalformedRowError for a `puzzle_info.csv` without the columns id, type, name.
    """
    info = {pid: PuzzleInfo(skill) for pid, skill in skill_types().items()}
    path = pathlib.Path(root, PUZZLE_INFO_CSV) if root else None
    if path is None or not path.is_file():
        return info
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not set(PUZZLE_INFO_COLUMNS) <= set(reader.fieldnames or ()):
            expected = list(PUZZLE_INFO_COLUMNS)
            raise MalformedRowError(f"{path}: columns {reader.fieldnames}, expected {expected}")
        for row in reader:
            info[int(row["id"])] = PuzzleInfo(row["type"].strip().lower(), row["name"].strip())
    return info


def write_puzzle_info(
    root: str | os.PathLike, info: Mapping[int, PuzzleInfo], suffix: str = ""
) -> pathlib.Path:
    """Writes `<root>/puzzle_info.csv` (id, type, name; sorted by id), which `read_puzzle_info` prefers;
    `suffix` is added to the file name (a temporary name to rename into place). Returns the path."""
    path = pathlib.Path(root, PUZZLE_INFO_CSV + suffix)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(PUZZLE_INFO_COLUMNS)
        for pid in sorted(info):
            writer.writerow([pid, info[pid].type, info[pid].name])
    return path


@functools.cache
def skill_types() -> dict[int, str]:
    """Skill type (lower case, SMART_info_v2.csv column `type`) of each puzzle id 1..101."""
    with open(assets.path("SMART_info_v2.csv"), newline="", encoding="utf-8") as f:
        return {int(r["id"]): r["type"].strip().lower() for r in csv.DictReader(f)}


# --------------------------------------------------------------------------------------------- splits


# The split types of SPEC section 3 (``default_data_config().split_type``).
SPLIT_TYPES = ("instance", "puzzle", "fewshot", "answer")


def default_data_config() -> ml_collections.ConfigDict:
    """The data fields of a run's config, each with its default."""
    c = ml_collections.ConfigDict()
    c.root = ""  # SMART-101 folder (<root>/<pid>/puzzle_<pid>.csv), or synthetic.py's output.
    c.data_dir = ""  # TFDS data dir that build.py wrote (the pipeline reads only this).
    c.puzzle_ids = "all"  # "all" (every puzzle built) or comma-separated ids "1,2,3" (a flag-friendly str).
    c.split_type = "instance"  # "instance" | "puzzle" (zero-shot) | "fewshot" | "answer" (SPEC section 3).
    c.data_tot = 1000  # Rows used per puzzle: the first data_tot of its CSV.
    c.ratio = (60, 20, 20)  # train:val:test percentages, applied per puzzle in row order.
    c.fs_k = 100  # fewshot: rows of each held-out puzzle that the train split may see (ratio applies).
    c.skip_bad_rows = False  # Build: skip (count, log) rows with missing/undecodable images, not fail.
    c.image_side = IMAGE_SIDE  # Shorter image side after the reference's first resize.
    return c


def _ratio_range(n: int, ratio: Sequence[int], split: str) -> range:
    """Rows of one split among n in row order: floor/ceil bounds of the cumulative ratios (integer math)."""
    a, b = ratio[0], ratio[0] + ratio[1]
    total = sum(ratio)
    floor = lambda pct: n * pct // total
    ceil = lambda pct: -(-n * pct // total)
    if split == "train":
        return range(0, floor(a))
    if split == "val":
        return range(ceil(a), floor(b))
    return range(ceil(b), n)


def _answer_holdout_class(labels: Sequence[int], num_classes: int) -> int:
    """The reference's held-out answer: among answers of >1% frequency, the largest one whose frequency is
    at most the median frequency (`split_data(split_type="exclude")`, histogram bins included)."""
    hist = np.histogram(np.asarray(labels), np.arange(num_classes))[0].astype(np.float64)
    freq = hist / hist.sum()
    classes = np.arange(num_classes)[:-1][freq > 0.01]
    freq = freq[freq > 0.01]
    return int(classes[freq <= np.median(freq)][-1])


def _check_split(split: str, cfg: ml_collections.ConfigDict) -> None:
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, not {split!r}")
    if cfg.split_type not in SPLIT_TYPES:
        raise ValueError(f"split_type must be one of {SPLIT_TYPES}, not {cfg.split_type!r}")


def split_indices(
    puzzle_ids: Sequence[int],
    row_indices: Sequence[int],
    labels: Sequence[Label],
    split: str,
    cfg: ml_collections.ConfigDict,
    num_classes_per_puzzle: Mapping[int, int],
    num_rows_per_puzzle: Mapping[int, int] | None = None,
) -> np.ndarray:
    """Positions (into the given parallel lists) of the rows of `split`, sorted by (puzzle, row).

    Works on the builder's small index as well as on Rows, so the pipeline never decodes an image to
    split. Rows missing from the lists (skipped bad rows) just drop out of their split; positions are
    the CSV `row_indices`, and `num_rows_per_puzzle` gives each CSV's length (default: max row index + 1).
    Semantics follow the reference (README "## SMART-101 data"):
      instance: first data_tot rows of each puzzle, then ratio per puzzle in row order;
      puzzle:   train/val/test puzzles of SPEC section 3, and the ratio still applies inside each puzzle;
      fewshot:  train = train puzzles' ratio-train rows + the ratio-train part of the first fs_k rows of
                every held-out puzzle; val/test = the ratio-val/test part of rows [fs_k, data_tot) of the
                val/test puzzles;
      answer:   rows whose label equals the puzzle's held-out answer are the test split; train and val
                divide the others (ratio train+test : val); sequence puzzles and 58 fall back to instance.
    """
    _check_split(split, cfg)
    ratio = tuple(cfg.ratio)
    by_puzzle: dict[int, list[int]] = collections.defaultdict(list)
    for pos in np.lexsort((np.asarray(row_indices), np.asarray(puzzle_ids))):
        by_puzzle[int(puzzle_ids[pos])].append(int(pos))
    if num_rows_per_puzzle is None:
        num_rows_per_puzzle = {p: max(row_indices[i] for i in ps) + 1 for p, ps in by_puzzle.items()}
    chosen: list[int] = []
    for pid, positions in sorted(by_puzzle.items()):
        if cfg.split_type == "answer" and not puzzles.is_sequence(pid) and pid != 58:
            hi = min(num_rows_per_puzzle[pid], cfg.data_tot)
            kept = [p for p in positions if row_indices[p] < hi]
            answers = [labels[p][0] for p in kept]
            chosen.extend(_answer_split(kept, answers, num_classes_per_puzzle[pid], split, ratio))
            continue
        rows = _csv_rows(pid, num_rows_per_puzzle[pid], split, cfg)
        if rows is None:
            continue
        selected = {rows[i] for i in _ratio_range(len(rows), ratio, split)}
        chosen.extend(p for p in positions if row_indices[p] in selected)
    return np.asarray(chosen, dtype=np.int64)


def _csv_rows(pid: int, n_csv: int, split: str, cfg: ml_collections.ConfigDict) -> range | None:
    """The CSV rows of puzzle ``pid`` (``n_csv`` rows) that take part in ``split`` before the ratio divides
    them (instance, puzzle and fewshot splits); None when the puzzle has no rows in the split."""
    lo, hi = 0, min(n_csv, cfg.data_tot)
    if cfg.split_type in ("puzzle", "fewshot"):
        held_val, held_test = pid in puzzles.PUZZLE_SPLIT_VAL, pid in puzzles.PUZZLE_SPLIT_TEST
        held = held_val or held_test
        in_split = {"val": held_val, "test": held_test, "train": not held}[split]
        if cfg.split_type == "fewshot" and held:
            if split == "train":
                hi, in_split = min(n_csv, cfg.fs_k), True
            else:
                lo = min(cfg.fs_k, hi)
        if not in_split:
            return None
    return range(lo, hi)


def _answer_split(
    positions: list[int], answers: list[int], num_classes: int, split: str, ratio: tuple[int, ...]
) -> list[int]:
    """The ``positions`` (one puzzle's rows within data_tot, in row order; ``answers`` their label at
    position 0) of ``split`` under the answer split: the rows of the held-out answer are the test split;
    train and val divide the others in row order with ratio (train + test) : val."""
    holdout = _answer_holdout_class(answers, num_classes)
    if split == "test":
        return [p for p, a in zip(positions, answers, strict=True) if a == holdout]
    others = [p for p, a in zip(positions, answers, strict=True) if a != holdout]
    merged = (ratio[0] + ratio[2], ratio[1], 0)
    return [others[i] for i in _ratio_range(len(others), merged, split)]


def split_rows(
    rows: Sequence[Row],
    split: str,
    cfg: ml_collections.ConfigDict,
    num_classes_per_puzzle: Mapping[int, int] | None = None,
) -> list[Row]:
    """The rows of `split` ("train" | "val" | "test") under `cfg` (split_type, data_tot, ratio, fs_k).

    `rows` should be whole CSVs as `read_rows` returns them (C_p and CSV lengths are computed from them
    unless `num_classes_per_puzzle` is given).
    """
    if num_classes_per_puzzle is None:
        num_classes_per_puzzle = num_classes(rows)
    idx = split_indices(
        [r.puzzle_id for r in rows],
        [r.row_index for r in rows],
        [r.label for r in rows],
        split,
        cfg,
        num_classes_per_puzzle,
    )
    return [rows[i] for i in idx]


def split_size(n: int, ratio: Sequence[int], split: str) -> int:
    """Size of a split of n rows under SPEC section 3's floor/ceil formulas (for tests and reports)."""
    return len(_ratio_range(n, ratio, split))
