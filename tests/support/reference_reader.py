"""The reference's SMART-101 reader, transcribed for tests: `read_csv`, `get_val`, `get_puzzle_class_info`.

Plain Python after SPEC section 1 (CSV rows; an empty `A` means options "A".."E"; `Answer` used unstripped)
and section 2 (answer values, C_p), with the reference's behaviour where it matters to a writer:
- the answer letter indexes the row itself (`qinfo[qinfo["Answer"]]`), so "C " raises KeyError;
- nothing is stripped: an option " A" or "4 cm " that has no value raises ValueError (the reference stops
  in pdb there); `int()` alone tolerates surrounding spaces, as Python's does;
- puzzle 63's list is padded with C_63 - 1 only once C_63 is known (pass `num_classes_63`), and
  `get_puzzle_class_info` counts C_63 from the unpadded lists.
Used to check that data written for the reference (synthetic.py) reads there as it reads in smart101.py.
Not part of the runtime package.
"""

import csv
import functools

from smartvlm_jax import assets, puzzles

SIGNS = ("+", "-", "x", "/")  # puzzle 58: sign code = position + 1
UNITS = (" hours", " hour", " cm", " km")  # stripped in this order
K = puzzles.NUM_DECODE_STEPS


@functools.cache
def icon_class_ids() -> tuple[str, ...]:
    """icon-classes.txt, each line right-stripped, in file order (the value of puzzle 1's options)."""
    with open(assets.path("icon-classes.txt")) as f:
        return tuple(line.rstrip() for line in f)


def read_csv(path: str, puzzle_id: int) -> list[dict]:
    """The rows of a puzzle CSV as dicts with `puzzle_id` added; empty `A` -> options "A".."E"."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            row["puzzle_id"] = str(puzzle_id)
            if len(row["A"]) == 0:
                row.update({c: c for c in "ABCDE"})
            rows.append(row)
    return rows


def _pad(values: list[int], pad: int) -> list[int]:
    return values + [pad] * (K - len(values)) if len(values) < K else values


def _comma_list(text: str, words: tuple[str, ...], drop: tuple[str, ...] = ()) -> list[str]:
    """Words -> ",", then ", ," -> ",", then `drop` words and spaces removed, split on ","."""
    for word in words:
        text = text.replace(word, ",")
    text = text.replace(", ,", ",")
    for word in drop:
        text = text.replace(word, "")
    return text.replace(" ", "").split(",")


def get_val(qinfo: dict, ans_opt: str, num_classes_63: int | None = None):
    """The value of option `ans_opt` (a letter, used as a key of the row as given) of row `qinfo`.

    Sequence puzzles give a list padded to K; others an int. Raises KeyError for an `ans_opt` that is not
    a column ("C "), ValueError or TypeError where the reference has no value.
    """
    pid = int(qinfo["puzzle_id"])
    text = qinfo[ans_opt]
    if pid in puzzles.SEQUENCE_PUZZLES:
        if pid == 16:
            return _pad([int(v) for v in _comma_list(text, ("and",))], 26)
        if pid == 18:
            return _pad([int(v) for v in text.split("-")], 5)
        if pid == 35:
            return _pad([ord(v) - ord("A") for v in _comma_list(text, ("and",))], 5)
        if pid in (39, 100):
            return _pad([ord(v) - ord("A") for v in text], 26)
        values = [int(v) for v in _comma_list(text, ("and", "or"), drop=("only",))]  # 63
        return values if num_classes_63 is None else _pad(values, num_classes_63 - 1)
    if pid == 58:
        return (SIGNS.index(text[0]) + 1) * 10 + int(text[1:])
    if pid == 25:
        value = int(text.replace(":00 AM", "").replace(":00 PM", ""))
        return value + 12 if "PM" in text else value
    try:
        return int(text)
    except ValueError:
        pass
    if len(text) == 0:
        return ord(ans_opt) - ord("A")
    if len(text) == 1:
        return ord(text) - ord("A")
    for unit in UNITS:
        text = text.replace(unit, "")
    text = text.replace("Impossible", "0")
    if pid == 1:
        name = "_".join(text.split(" "))
        for candidate in (name, name + "s"):
            if candidate in icon_class_ids():
                return icon_class_ids().index(candidate)
    return int(text)


def get_puzzle_class_info(csv_paths: dict[int, str]) -> dict[int, int]:
    """C_p of each puzzle from its whole CSV (puzzle id -> CSV path): max answer value + 1, with the fixed
    counts of the sequence puzzles (16, 39, 100 -> 27; 18, 35 -> 6) and 63 from its unpadded lists."""
    classes = {}
    for pid, path in csv_paths.items():
        rows = read_csv(path, pid)
        if pid in (16, 39, 100):
            classes[pid] = 27
        elif pid in (18, 35):
            classes[pid] = 6
        elif pid == 63:
            classes[pid] = max(max(get_val(qa, qa["Answer"])) for qa in rows) + 1
        else:
            classes[pid] = max(get_val(qa, qa["Answer"]) for qa in rows) + 1
    return classes
