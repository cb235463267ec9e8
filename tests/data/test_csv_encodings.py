"""Puzzle CSVs as people save them: BOM, CRLF or LF, UTF-16; 8-bit encodings refused with path:line and byte.

Every reader of a puzzle CSV (dataset build, training's rows and splits, ``evaluate``, ``predict`` batch
mode) goes through ``smart101.read_puzzle``, so the checks here cover them; the build is run once on a
re-encoded file to show the path end to end.
"""

from __future__ import annotations

import codecs
import csv
import io
import pathlib

import pytest

from smartvlm_jax.data import build, smart101, synthetic

PUZZLE = 3  # "count the circles": plain numeric options
# Non-ASCII text in the question of the second data row (CSV line 3): a Latin accent everywhere, plus
# characters Windows-1252 has and Latin-1 lacks (en dash, curly quotes).
ACCENTED = "Combien de cercles dans l\u2019image \u2013 caf\u00e9?"
LATIN1_SAFE = "Combien de cercles dans l'image - caf\u00e9?"


def _write_variant(root: pathlib.Path, text: str, encoding: str, newline: str) -> pathlib.Path:
    path = root / str(PUZZLE) / f"puzzle_{PUZZLE}.csv"
    data = text.replace("\r\n", "\n").replace("\n", newline)
    path.write_bytes(data.encode(encoding))
    return path


@pytest.fixture()
def puzzle_root(tmp_path):
    root = tmp_path / "root"
    synthetic.write_dataset(str(root), per_puzzle=4, seed=0, puzzle_ids=[PUZZLE])
    return root


def _with_question(root: pathlib.Path, question: str) -> str:
    """The puzzle's CSV text (LF line ends) with row 2's question replaced."""
    path = root / str(PUZZLE) / f"puzzle_{PUZZLE}.csv"
    records = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))
    records[2][1] = question
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(records)
    return out.getvalue()


@pytest.mark.parametrize(
    "encoding, newline",
    [
        ("utf-8", "\n"),
        ("utf-8", "\r\n"),
        ("utf-8-sig", "\r\n"),
        ("utf-8-sig", "\n"),
        ("utf-16", "\r\n"),
        ("utf-16-be", "\n"),
    ],
)
def test_utf8_with_or_without_bom_and_utf16_read_like_the_plain_file(puzzle_root, encoding, newline):
    text = _with_question(puzzle_root, ACCENTED)
    _write_variant(puzzle_root, text, "utf-8", "\n")
    plain = smart101.read_puzzle(puzzle_root, PUZZLE)
    assert plain[1].question == ACCENTED
    if encoding == "utf-16-be":  # with its byte-order mark, as editors write it
        path = _write_variant(puzzle_root, text, "utf-16-be", newline)
        path.write_bytes(codecs.BOM_UTF16_BE + path.read_bytes())
    else:
        _write_variant(puzzle_root, text, encoding, newline)
    assert smart101.read_puzzle(puzzle_root, PUZZLE) == plain


@pytest.mark.parametrize(
    "encoding, question, byte, column",
    [("cp1252", ACCENTED, "92", 28), ("latin-1", LATIN1_SAFE, "e9", 40)],  # 1-based, after "2,"
)
def test_8bit_encodings_are_refused_naming_file_line_and_byte(puzzle_root, encoding, question, byte, column):
    path = _write_variant(puzzle_root, _with_question(puzzle_root, question), encoding, "\r\n")
    expected = rf"puzzle_3\.csv:3: byte 0x{byte} at column {column} is not utf-8 .*re-save it as UTF-8"
    with pytest.raises(smart101.MalformedRowError, match=expected) as err:
        smart101.read_puzzle(puzzle_root, PUZZLE)
    assert str(path) in str(err.value)
    with pytest.raises(smart101.MalformedRowError, match=rf"puzzle_3\.csv:3: byte 0x{byte}"):
        smart101.read_rows(puzzle_root, "all")  # what training, evaluate and predict --split read


def test_utf16_without_bom_is_named(puzzle_root):
    _write_variant(puzzle_root, _with_question(puzzle_root, ACCENTED), "utf-16-le", "\r\n")
    with pytest.raises(smart101.MalformedRowError, match=r"puzzle_3\.csv:1: NUL bytes \(UTF-16 without"):
        smart101.read_puzzle(puzzle_root, PUZZLE)


def test_build_reads_a_bom_file(puzzle_root, tmp_path):
    """The dataset build (Excel's "CSV UTF-8" file, BOM and CRLF) holds the same rows as the reader gives."""
    _write_variant(puzzle_root, _with_question(puzzle_root, ACCENTED), "utf-8-sig", "\r\n")
    builder = build.build(puzzle_root, tmp_path / "tfds")
    assert builder.info.metadata["puzzle_ids"] == [PUZZLE]
    assert builder.info.splits["full"].num_examples == len(smart101.read_puzzle(puzzle_root, PUZZLE)) == 4
