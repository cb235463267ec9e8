"""Synthetic SMART-format puzzles: the project's embedded default dataset.

Writes the release's exact layout (`<out>/<pid>/puzzle_<pid>.csv`, `<out>/<pid>/img/*.png`, the release's
CSV header and quoting, PNGs of varying size, some RGBA with a transparent background) for eleven puzzle
ids that together exercise every answer-value rule of SPEC section 2. In every family the picture
determines the answer with big, high-contrast shapes (count circles, read a clock hand, name a shape,
list the filled boxes...), so a tiny model looking at ~32 px images can learn it. Deterministic for a seed.

`--puzzles all` writes every puzzle id 1..101 (SMART-101 scale), the release's misnamed `62/puzzle_63.csv`
included: the eleven families as above, every other puzzle from its root puzzle in the shipped
SMART_info_v2.csv (`root_puzzle`: the root's question with its numbers varied, options in the root's own
format or, where SPEC section 2 cannot encode it, the nearest one that it can (NEAREST_FORMAT), and a
picture that draws the answer's value). Puzzles are written by `--workers` processes; the files depend
only on (seed, puzzle id), not on the worker count. No `Answer` or option has surrounding whitespace.

    python -m smartvlm_jax.data.synthetic --out /tmp/smart_synth --per-puzzle 40 --seed 0
    python -m smartvlm_jax.data.synthetic --out /tmp/smart101 --per-puzzle 2000 --puzzles all --workers 2
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import functools
import itertools
import math
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from smartvlm_jax import assets, cli, puzzles
from smartvlm_jax.data import smart101

LETTERS = ("A", "B", "C", "D", "E")
# The release's puzzle CSV header; only id..Answer are read.
CSV_HEADER = ("id", "Question", "image", "A", "B", "C", "D", "E", "Answer", "Note")
# Saturated colours far apart from each other and from the white background.
RED, GREEN, BLUE, ORANGE, BLACK, GRAY = (
    (220, 30, 30),
    (20, 160, 40),
    (30, 60, 220),
    (250, 150, 0),
    (0, 0, 0),
    (150,) * 3,
)
# Puzzle 39's colour code: letter A..D <-> colour.
LETTER_COLOURS = (RED, GREEN, BLUE, ORANGE)

Puzzle = tuple[str, Image.Image, list[str], int]  # question, picture, five options, index of the answer


def _canvas(rng: np.random.Generator, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """A blank picture of a random size (the release's PNGs vary), landscape or portrait."""
    w, h = int(rng.integers(240, 420)), int(rng.integers(230, 380))
    return Image.new("RGB", (w, h), background)


def _cells(im: Image.Image, cols: int, rows: int = 1) -> list[tuple[int, int, int]]:
    """Centres and radius of a cols x rows grid of non-overlapping cells filling the picture."""
    w, h = im.size
    cw, ch = w / cols, h / rows
    r = int(0.38 * min(cw, ch))
    return [(int((i + 0.5) * cw), int((j + 0.5) * ch), r) for j in range(rows) for i in range(cols)]


def _disc(draw: ImageDraw.ImageDraw, x: int, y: int, r: int, fill) -> None:
    draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)


def _box(draw: ImageDraw.ImageDraw, x: int, y: int, r: int, fill, outline=BLACK) -> None:
    draw.rectangle((x - r, y - r, x + r, y + r), fill=fill, outline=outline, width=max(2, r // 8))


def _options(rng: np.random.Generator, answer, candidates: Sequence, sort: bool = True) -> tuple[list, int]:
    """Five distinct options including `answer`; numeric ones sorted as in the release."""
    others = [c for c in candidates if c != answer]
    picks = [answer] + [others[i] for i in rng.choice(len(others), size=4, replace=False)]
    if sort:
        picks.sort()
    else:
        picks = [picks[i] for i in rng.permutation(5)]
    return picks, picks.index(answer)


def icon_names(rng: np.random.Generator) -> Puzzle:
    """Puzzle 1 (icon class names): one big shape; each shape stands for one icon class."""
    im = _canvas(rng)
    d = ImageDraw.Draw(im)
    x, y, r = im.width // 2, im.height // 2, int(0.4 * min(im.size))
    # Option texts exercise the rule's spaces -> "_" ("arrow directions") and plural ("book" -> books).
    shapes: dict[str, Callable[[], None]] = {
        "ball": lambda: _disc(d, x, y, r, RED),
        "arrow directions": lambda: d.polygon([(x - r, y + r), (x + r, y + r), (x, y - r)], fill=BLUE),
        "book": lambda: d.rectangle((x - r, y - r // 2, x + r, y + r // 2), fill=GREEN),
        "star": lambda: d.polygon(
            [
                (
                    x + (r if k % 2 == 0 else r // 2.5) * math.sin(k * math.pi / 5),
                    y - (r if k % 2 == 0 else r // 2.5) * math.cos(k * math.pi / 5),
                )
                for k in range(10)
            ],
            fill=ORANGE,
        ),
        "cloud": lambda: d.ellipse((x - r, y - r // 3, x + r, y + r // 3), fill=GRAY),
    }
    names = list(shapes)
    answer = names[int(rng.integers(len(names)))]
    shapes[answer]()
    options, index = _options(rng, answer, names, sort=False)
    return "Which icon is shown in the picture?", im, options, index


def count_circles(rng: np.random.Generator) -> Puzzle:
    """Puzzle 3 (numeric): count the big circles."""
    im = _canvas(rng)
    d = ImageDraw.Draw(im)
    n = int(rng.integers(1, 7))
    for i in rng.choice(6, size=n, replace=False):
        _disc(d, *_cells(im, 3, 2)[i], fill=BLUE)
    options, index = _options(rng, n, range(1, 10))
    return "In the picture, how many circles are there?", im, [str(o) for o in options], index


def _impossible_distractor(texts: list[str], index: int) -> None:
    """A distractor "Impossible" (value 0) replaces the last wrong option (the largest, if sorted)."""
    texts[4 if index != 4 else 3] = "Impossible"


def bar_length(rng: np.random.Generator) -> Puzzle:
    """Puzzle 7 (units " cm", "Impossible" -> 0): the bar is k units long on a drawn ruler of 8 units."""
    im = _canvas(rng)
    d = ImageDraw.Draw(im)
    k = int(rng.integers(1, 9))
    unit = im.width * 0.9 / 8
    x0, y = im.width * 0.05, im.height // 2
    d.rectangle((x0, y - im.height // 6, x0 + k * unit, y + im.height // 6), fill=RED)
    for t in range(9):  # ruler ticks under the bar
        d.line((x0 + t * unit, im.height * 0.8, x0 + t * unit, im.height * 0.95), fill=BLACK, width=3)
    options, index = _options(rng, k, range(1, 10))
    texts = [f"{o} cm" for o in options]
    if rng.random() < 0.3:
        _impossible_distractor(texts, index)
    return "How long is the red bar, if one tick is 1 cm?", im, texts, index


def box_letters(rng: np.random.Generator) -> Puzzle:
    """Puzzle 94 (single-letter answers, empty option columns): which of boxes A..E is red?"""
    im = _canvas(rng)
    d = ImageDraw.Draw(im)
    odd = int(rng.integers(5))
    for i, (x, y, r) in enumerate(_cells(im, 5)):
        _box(d, x, y, r, RED if i == odd else GRAY)
    return "Which box, from left to right A to E, is different?", im, ["", "", "", "", ""], odd


def clock(rng: np.random.Generator) -> Puzzle:
    """Puzzle 25 (clock times "H:00 AM|PM"): hour hand points at H; dark background means PM."""
    pm = bool(rng.random() < 0.5)
    im = _canvas(rng, (20, 20, 90) if pm else (255, 240, 150))
    d = ImageDraw.Draw(im)
    x, y, r = im.width // 2, im.height // 2, int(0.45 * min(im.size))
    _disc(d, x, y, r, (255, 255, 255))
    hour = int(rng.integers(1, 13))
    angle = hour * math.pi / 6
    d.line(
        (x, y, x + 0.75 * r * math.sin(angle), y - 0.75 * r * math.cos(angle)), fill=RED, width=max(6, r // 6)
    )
    d.line((x, y, x, y - 0.95 * r), fill=BLACK, width=max(2, r // 20))
    fmt = lambda h, p: f"{h}:00 {'PM' if p else 'AM'}"
    cands = [fmt(h, p) for h in range(1, 13) for p in (False, True)]
    options, index = _options(rng, fmt(hour, pm), cands, sort=False)
    return "What time does the clock show, if a dark sky means afternoon?", im, options, index


def _sign(d: ImageDraw.ImageDraw, sign: str, x: int, y: int, r: int) -> None:
    width = max(6, r // 4)
    if sign in "+x":
        turn = 0 if sign == "+" else math.pi / 4
        for a in (turn, turn + math.pi / 2):
            dx, dy = r * math.cos(a), r * math.sin(a)
            d.line((x - dx, y - dy, x + dx, y + dy), fill=BLACK, width=width)
    elif sign == "-":
        d.line((x - r, y, x + r, y), fill=BLACK, width=width)
    else:
        d.line((x - r * 0.6, y + r, x + r * 0.6, y - r), fill=BLACK, width=width)


def sign_digit(rng: np.random.Generator) -> Puzzle:
    """Puzzle 58 ("<sign><digit>"): a big operator sign on the left, digit = number of dots on the right."""
    im = _canvas(rng)
    d = ImageDraw.Draw(im)
    sign, digit = "+-x/"[int(rng.integers(4))], int(rng.integers(1, 5))
    cx, cy, cr = _cells(im, 2)[0]
    _sign(d, sign, cx, cy, cr)
    for j in range(digit):
        _disc(d, *_cells(im, 4, 4)[2 + (j // 2) * 4 + j % 2][:2], int(0.1 * min(im.size)), fill=RED)
    cands = [s + str(k) for s in "+-x/" for k in range(1, 5)]
    options, index = _options(rng, sign + str(digit), cands, sort=False)
    return "Which operation and number does the picture show?", im, options, index


def _and_list(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _subset_options(rng: np.random.Generator, n: int, answer: tuple[int, ...]) -> tuple[list, int]:
    cands = [c for k in (2, 3, 4) for c in itertools.combinations(range(n), k)]
    return _options(rng, answer, cands, sort=False)


def filled_boxes(rng: np.random.Generator) -> Puzzle:
    """Puzzle 16 (integers joined by "," and "and"): which of boxes 1..5 are filled?"""
    im = _canvas(rng)
    d = ImageDraw.Draw(im)
    filled = tuple(sorted(rng.choice(5, size=int(rng.integers(2, 5)), replace=False).tolist()))
    for i, (x, y, r) in enumerate(_cells(im, 5)):
        _box(d, x, y, r, BLACK if i in filled else (255, 255, 255))
    options, index = _subset_options(rng, 5, filled)
    texts = [_and_list([str(i + 1) for i in o]) for o in options]
    return "Which boxes, numbered 1 to 5 from left to right, are filled?", im, texts, index


def bar_heights(rng: np.random.Generator) -> Puzzle:
    """Puzzle 18 (integers joined by "-"): heights (1..4 units) of four bars from left to right."""
    im = _canvas(rng)
    d = ImageDraw.Draw(im)
    heights = tuple(int(h) for h in rng.integers(1, 5, size=4))
    unit = im.height * 0.9 / 4
    for i, (x, _, r) in enumerate(_cells(im, 4)):
        d.rectangle((x - r, im.height - heights[i] * unit, x + r, im.height), fill=GREEN)
    cands = list(itertools.product(range(1, 5), repeat=4))
    options, index = _options(rng, heights, cands, sort=False)
    return "How high are the bars from left to right?", im, ["-".join(map(str, o)) for o in options], index


def marked_letters(rng: np.random.Generator) -> Puzzle:
    """Puzzle 35 (letters joined by "," and "and"): which of the places A..E hold a triangle?"""
    im = _canvas(rng)
    d = ImageDraw.Draw(im)
    marked = tuple(sorted(rng.choice(5, size=int(rng.integers(2, 4)), replace=False).tolist()))
    for i, (x, y, r) in enumerate(_cells(im, 5)):
        if i in marked:
            d.polygon([(x - r, y + r), (x + r, y + r), (x, y - r)], fill=ORANGE)
        else:
            _disc(d, x, y, r // 3, GRAY)
    options, index = _subset_options(rng, 5, marked)
    texts = [_and_list([LETTERS[i] for i in o]) for o in options]
    return "Which places, A to E from left to right, hold a triangle?", im, texts, index


def _colour_word(
    rng: np.random.Generator, alphabet: str, colours: Sequence[tuple[int, int, int]]
) -> tuple[Image.Image, list[str], int]:
    """Four discs whose colours (alphabet[i] <-> colours[i]) spell the answer word; five word options."""
    im = _canvas(rng)
    d = ImageDraw.Draw(im)
    word = "".join(alphabet[int(i)] for i in rng.integers(len(alphabet), size=4))
    for letter, (x, y, r) in zip(word, _cells(im, 4), strict=True):
        _disc(d, x, y, r, colours[alphabet.index(letter)])
    cands = ["".join(p) for p in itertools.product(alphabet, repeat=4)]
    options, index = _options(rng, word, cands, sort=False)
    return im, options, index


def colour_word(rng: np.random.Generator) -> Puzzle:
    """Puzzle 39 (every character a letter): the colours of four discs spell a word (A red, B green...)."""
    im, options, index = _colour_word(rng, "ABCD", LETTER_COLOURS)
    return "Red is A, green B, blue C, orange D. Which word do the discs spell?", im, options, index


def red_and_blue(rng: np.random.Generator) -> Puzzle:
    """Puzzle 63 ("and", "or", "only"): counts of red and blue discs ("3 and 1", "2 only")."""
    im = _canvas(rng)
    d = ImageDraw.Draw(im)
    red, blue = int(rng.integers(1, 5)), int(rng.integers(0, 4))
    cells = _cells(im, 4, 2)
    for i in range(red):
        _disc(d, *cells[i], fill=RED)
    for i in range(blue):
        _disc(d, *cells[4 + i], fill=BLUE)
    fmt = lambda r, b, word: f"{r} only" if b == 0 else f"{r} {word} {b}"
    answer = (red, blue)
    options, index = _options(rng, answer, [(r, b) for r in range(1, 5) for b in range(4)], sort=False)
    # Distractors join with "and" or "or" (same rule, ", " after replacement); the answer always "and".
    words = ["and" if o == answer else ("and", "or")[int(rng.integers(2))] for o in options]
    texts = [fmt(r, b, word) for (r, b), word in zip(options, words, strict=True)]
    return "How many red discs are there, and how many blue ones?", im, texts, index


# Puzzle id -> generator. The ids are real SMART-101 ids whose answer-value rule the family exercises;
# 7 and 94 are held-out puzzles of the zero-shot split, so every split type has rows.
FAMILIES: dict[int, Callable[[np.random.Generator], Puzzle]] = {
    1: icon_names,
    3: count_circles,
    7: bar_length,
    16: filled_boxes,
    18: bar_heights,
    25: clock,
    35: marked_letters,
    39: colour_word,
    58: sign_digit,
    63: red_and_blue,
    94: box_letters,
}

# Puzzle id -> (name, stand-in skill class) of each family, as the reports show them: the family's own
# task, and the skill class (puzzles.SKILL_CLASSES) that task exercises. The ids' real SMART-101 puzzles
# are other tasks of other skills (puzzle 1 is a path puzzle, 18 an "order" one), so `write_dataset`
# records these in the data root's puzzle_info.csv (smart101.read_puzzle_info).
FAMILY_INFO: dict[int, tuple[str, str]] = {
    1: ("which icon is drawn", "spatial"),
    3: ("count the circles", "counting"),
    7: ("bar length on a ruler", "measure"),
    16: ("which boxes are filled", "spatial"),
    18: ("bar heights, left to right", "measure"),
    25: ("read the clock", "measure"),
    35: ("which places hold a triangle", "spatial"),
    39: ("colours spell a word", "pattern"),
    58: ("sign and digit", "math"),
    63: ("count red and blue discs", "counting"),
    94: ("which box is red", "logic"),
}


def puzzle_info(puzzle_id: int) -> smart101.PuzzleInfo:
    """Name and skill of a synthetic puzzle: its family's (FAMILY_INFO), else its root's skill type and
    the name "root <id>, value drawn" (the root's question, numbers varied; the picture draws the answer)."""
    if puzzle_id in FAMILY_INFO:
        name, skill = FAMILY_INFO[puzzle_id]
        return smart101.PuzzleInfo(skill, name)
    return smart101.PuzzleInfo(roots()[puzzle_id].skill, f"root {puzzle_id}, value drawn")


# ------------------------------------------------------------------ the other 90 puzzles, from their roots

# Formats of the options, as the root puzzle in SMART_info_v2.csv writes them:
#   number  plain integers ("12")            unit    integer and unit ("3 hours", "45 cm", "9 km")
#   letter  the letters "A".."E" in order    letters five other capital letters ("R", "L", "K"...)
#   number_or_impossible  integers, one distractor "Impossible" (value 0)
#   word    four-letter words, a sequence of letters (puzzle 100)
NUMBER, UNIT, LETTER, LETTERS_FORMAT, NUMBER_OR_IMPOSSIBLE, WORD = (
    "number",
    "unit",
    "letter",
    "letters",
    "number_or_impossible",
    "word",
)
# Roots whose option format the answer-value rules of SPEC section 2 (and the reference's get_val) cannot
# encode, with the nearest format that can be. Puzzles 1 ("Adam", "Basil"...: icon names instead), 25
# ("1:00" without AM/PM: "1:00 PM" instead) and 63 ("2,3,or 4", whose empty item the reference cannot
# parse: "2 and 3", "2 or 3", "3 only" instead) are synthetic families, which write encodable formats.
NEAREST_FORMAT: dict[int, tuple[str, str]] = {
    65: (LETTER, "sentences '1 is blue, 2 is green, and 3 is red': letters A-E"),
    66: (LETTER, "'person A'..'person E': the letters alone"),
    84: (LETTER, "'C or D' among letters: letters A-E"),
    90: (NUMBER_OR_IMPOSSIBLE, "integers and 'never': integers and 'Impossible'"),
    92: (UNIT, "'20cm' (no space): '20 cm'"),
    101: (
        NUMBER_OR_IMPOSSIBLE,
        "'only 3', 'only 5 or 6', 'impossible' (not a sequence puzzle): integers and 'Impossible'",
    ),
}
UNIT_NAMES: tuple[str, ...] = ("hours", "cm", "km")  # the units that SPEC section 2 strips
# Puzzle 100's alphabet (the root's words use these letters) and its colour code.
WORD_ALPHABET = "AEHKMSTZ"
WORD_COLOURS = (*LETTER_COLOURS, BLACK, GRAY, (140, 40, 180), (0, 190, 200))
# Largest answer value that `_draw_value` draws (tens as squares, units as discs on a 6 x 3 grid).
MAX_DRAWN_VALUE = 99
# Question numbers that are varied: not part of a longer number, a time ("6:00") or a unit ("1m").
_QUESTION_NUMBER = re.compile(r"(?<![\d:.])\d+(?![\d:A-Za-z])")


@dataclasses.dataclass(frozen=True)
class Root:
    """A root puzzle of SMART_info_v2.csv: its skill type, question text and the five option texts."""

    puzzle_id: int
    skill: str
    question: str
    options: tuple[str, ...]


@functools.cache
def roots() -> dict[int, Root]:
    """The 101 root puzzles of the shipped SMART_info_v2.csv, by puzzle id (its `id` column)."""
    with open(assets.path("SMART_info_v2.csv"), newline="", encoding="utf-8") as f:
        return {
            int(r["id"]): Root(
                int(r["id"]), r["type"].strip().lower(), r["Question"].strip(), tuple(r[k] for k in LETTERS)
            )
            for r in csv.DictReader(f)
        }


def _is_int(text: str) -> bool:
    return re.fullmatch(r"-?\d+", text.strip()) is not None


def root_format(puzzle_id: int) -> tuple[str, str]:
    """(format, unit) of a non-family puzzle's options, read from its root's options (see NUMBER...).

    `unit` is " hours", " cm" or " km" for the unit format, else "". Roots that no rule can encode use
    NEAREST_FORMAT. Raises ValueError for a root whose format is neither recognised nor listed there.
    """
    options = [o.strip() for o in roots()[puzzle_id].options]
    kind = NEAREST_FORMAT.get(puzzle_id, ("", ""))[0]
    if not kind and all(_is_int(o) for o in options):
        kind = NUMBER
    elif not kind and all(len(o) == 1 and o.isupper() for o in options):
        kind = LETTER if options == list(LETTERS) else LETTERS_FORMAT
    elif not kind and all(re.fullmatch(r"\d+ (hours?|cm|km)", o) for o in options):
        kind = UNIT
    elif not kind and puzzles.is_sequence(puzzle_id) and all(o.isalpha() and o.isupper() for o in options):
        kind = WORD  # puzzle 100; its words use WORD_ALPHABET, so that colours can draw them
    if not kind:
        raise ValueError(f"puzzle {puzzle_id}: no encodable option format for root options {options}")
    unit = ""
    if kind == UNIT:
        unit = " " + next(u for u in UNIT_NAMES if options[0].rstrip("s").endswith(u.rstrip("s")))
    return kind, unit


def _vary_numbers(rng: np.random.Generator, text: str) -> str:
    """The text with each number n replaced by a random one within about n/4 of it (at least 1)."""

    def vary(match: re.Match) -> str:
        n = int(match.group())
        step = max(1, n // 4)
        return str(max(1, n + int(rng.integers(-step, step + 1))))

    return _QUESTION_NUMBER.sub(vary, text)


def _draw_value(rng: np.random.Generator, value: int) -> Image.Image:
    """A picture that shows `value` (0..99): value // 10 blue squares then value % 10 red discs, row-major
    on a 6 x 3 grid inside a gray frame (0 is the empty frame)."""
    if not 0 <= value <= MAX_DRAWN_VALUE:
        raise ValueError(f"cannot draw value {value}: outside 0..{MAX_DRAWN_VALUE}")
    im = _canvas(rng)
    d = ImageDraw.Draw(im)
    d.rectangle((0, 0, im.width - 1, im.height - 1), outline=GRAY, width=4)
    cells = _cells(im, 6, 3)
    tens, units = divmod(value, 10)
    for x, y, r in cells[:tens]:
        _box(d, x, y, r, BLUE)
    for x, y, r in cells[tens : tens + units]:
        _disc(d, x, y, r, RED)
    return im


def _root_numbers(root: Root) -> list[int]:
    """The first integer of each of the root's options that has one ("45 cm" -> 45, "never" -> none)."""
    found = [re.search(r"\d+", o) for o in root.options]
    return [int(m.group()) for m in found if m]


def _number_candidates(root: Root, low: int) -> range:
    """Answer values of a numeric root: its options' range widened by half its span, within low..99."""
    values = _root_numbers(root)
    lo, hi = min(values), max(values)
    span = max(hi - lo, 8)
    return range(max(low, lo - span // 2), min(MAX_DRAWN_VALUE, hi + span // 2) + 1)


def _root_order(root: Root, options: list[int], index: int, rng: np.random.Generator) -> tuple[list, int]:
    """Numeric options ordered as the root orders its own: ascending, descending or shuffled."""
    values = _root_numbers(root)
    answer = options[index]
    if values == sorted(values):
        return options, index
    if values == sorted(values, reverse=True):
        options = sorted(options, reverse=True)
    else:
        options = [options[i] for i in rng.permutation(5)]
    return options, options.index(answer)


def root_puzzle(puzzle_id: int, rng: np.random.Generator) -> Puzzle:
    """One instance of a non-family puzzle: the root's question with its numbers varied, options in the
    root's format (`root_format`), and a picture that draws the answer's value (`_draw_value`; puzzle 100
    colour-codes its word). A root without question text (none in the shipped file) gets a generic
    question of its skill type."""
    root = roots()[puzzle_id]
    question = _vary_numbers(rng, root.question) or f"Solve this {root.skill} puzzle: what is the answer?"
    kind, unit = root_format(puzzle_id)
    if kind == WORD:
        im, options, index = _colour_word(rng, WORD_ALPHABET, WORD_COLOURS)
        return question, im, options, index
    if kind == LETTER:
        index = int(rng.integers(5))
        return question, _draw_value(rng, index), list(LETTERS), index
    if kind == LETTERS_FORMAT:
        letters = [chr(ord("A") + i) for i in range(26)]
        answer = letters[int(rng.integers(26))]
        options, index = _options(rng, answer, letters, sort=False)
        return question, _draw_value(rng, ord(answer) - ord("A")), options, index
    cands = _number_candidates(root, 0 if kind == NUMBER else 1)
    answer = int(cands[int(rng.integers(len(cands)))])
    options, index = _options(rng, answer, cands)
    options, index = _root_order(root, options, index, rng)
    im = _draw_value(rng, answer)
    if kind == UNIT:
        texts = [f"{o}{' hour' if unit == ' hours' and o == 1 else unit}" for o in options]
    else:
        texts = [str(o) for o in options]
    if kind == NUMBER_OR_IMPOSSIBLE and rng.random() < 0.5:
        _impossible_distractor(texts, index)
    return question, im, texts, index


def generator(puzzle_id: int) -> Callable[[np.random.Generator], Puzzle]:
    """The instance generator of a puzzle id 1..101: its family, else its root (`root_puzzle`).

    Raises ValueError for an id outside 1..101.
    """
    if puzzle_id in FAMILIES:
        return FAMILIES[puzzle_id]
    if puzzle_id not in puzzles.ALL_PUZZLE_IDS:
        raise ValueError(f"no synthetic puzzle {puzzle_id}: ids are 1..101")
    return functools.partial(root_puzzle, puzzle_id)


def _save_png(im: Image.Image, path: str, rgba: bool) -> None:
    """Save as PNG; RGBA pictures make the white background transparent, as many release PNGs are."""
    if rgba:
        rgba_im = im.convert("RGBA")
        arr = np.asarray(rgba_im).copy()
        arr[(arr[..., 0] & arr[..., 1] & arr[..., 2]) == 255, 3] = 0  # white (fast all-255 test)
        im = Image.fromarray(arr, "RGBA")
    im.save(path, format="PNG")


def write_puzzle(out_dir: str, puzzle_id: int, per_puzzle: int, seed: int) -> None:
    """Write one puzzle's folder: CSV with the release header and `per_puzzle` instances, and their PNGs.

    The CSV is `puzzle_<pid>.csv`, except the release's misnamed `62/puzzle_63.csv`. Nothing written has
    surrounding whitespace in `Answer` or an option (SPEC section 1: the reference does not strip them).
    The random stream depends on (seed, puzzle_id) only. The folder is written under a temporary name
    in `out_dir` and renamed into place whole (replacing an older one), so a reader, or a writer
    interrupted or racing another, never leaves or sees a CSV without its images or the reverse.
    """
    make = generator(puzzle_id)
    rng = np.random.default_rng([seed, puzzle_id])
    final = os.path.join(out_dir, str(puzzle_id))
    folder = tempfile.mkdtemp(prefix=f".{puzzle_id}.tmp-", dir=out_dir)
    try:
        os.makedirs(os.path.join(folder, "img"))
        csv_name = smart101.MISNAMED_CSV.get(puzzle_id, f"puzzle_{puzzle_id}.csv")
        with open(os.path.join(folder, csv_name), "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)  # QUOTE_MINIMAL: questions with commas are quoted, as in the release
            writer.writerow(CSV_HEADER)
            for k in range(1, per_puzzle + 1):
                question, im, options, index = make(rng)
                image = f"puzzle_{puzzle_id}_e_{k}.png"
                _save_png(im, os.path.join(folder, "img", image), rgba=bool(rng.random() < 0.3))
                writer.writerow([k, question, image, *options, LETTERS[index], "synthetic"])
        os.chmod(folder, 0o755)  # (mkdtemp's 0o700)
        _swap_into_place(folder, final)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # only what an error left


def _swap_into_place(new: str, final: str) -> None:
    """Rename folder `new` to `final`; an existing `final` is renamed aside first and removed after."""
    old = None
    if os.path.lexists(final):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.old-", dir=os.path.dirname(final))
        os.rename(final, os.path.join(old, "x"))
    os.rename(new, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def resolve_ids(puzzle_ids: str | Sequence[int] | None) -> list[int]:
    """None -> the 11 families; "all" -> 1..101; ids (or "1,2,3") -> those, sorted.

    Raises ValueError for an id outside 1..101.
    """
    if puzzle_ids is None:
        return sorted(FAMILIES)
    if puzzle_ids == "all":
        return list(puzzles.ALL_PUZZLE_IDS)
    ids = smart101.resolve_puzzle_ids("", puzzle_ids)
    unknown = [p for p in ids if p not in puzzles.ALL_PUZZLE_IDS]
    if unknown:
        families = sorted(FAMILIES)
        raise ValueError(f"no synthetic puzzle for ids {unknown}: ids are 1..101 (families: {families})")
    return ids


def write_dataset(
    out_dir: str,
    per_puzzle: int,
    seed: int,
    puzzle_ids: str | Sequence[int] | None = None,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> list[int]:
    """Write synthetic puzzles in the release layout under `out_dir`; returns the puzzle ids written.

    `puzzle_ids`: None = the 11 families, "all" = every id 1..101 (families where there is one, the
    others from their roots), or a list of ids. `workers` > 1 writes puzzles in that many spawned
    processes (a calling script needs the usual `if __name__ == "__main__":` guard); the files are
    byte-identical for any worker count. `<out_dir>/puzzle_info.csv` names each puzzle and its skill
    (`puzzle_info`) for the reports. `progress`, if given, is called with each puzzle id once its folder is
    written (a progress bar's update). Raises ValueError for ids outside 1..101.
    """
    ids = resolve_ids(puzzle_ids)
    os.makedirs(out_dir, exist_ok=True)
    info = smart101.write_puzzle_info(
        out_dir, {pid: puzzle_info(pid) for pid in ids}, suffix=f".{os.getpid()}.tmp"
    )
    os.replace(info, os.path.join(out_dir, smart101.PUZZLE_INFO_CSV))
    done = progress or (lambda pid: None)
    if workers <= 1 or len(ids) == 1:
        for pid in ids:
            write_puzzle(out_dir, pid, per_puzzle, seed)
            done(pid)
        return ids
    # Spawned workers: the caller may have JAX threads running, which fork would copy mid-state.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(ids)), mp_context=context) as pool:
        # Largest first would not matter: every puzzle costs about the same. Results re-raise errors.
        futures = {pool.submit(write_puzzle, out_dir, pid, per_puzzle, seed): pid for pid in ids}
        for future in concurrent.futures.as_completed(futures):
            future.result()
            done(futures[future])
    return ids


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog=cli.prog("smartvlm_jax.data.synthetic"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="output folder (the SMART-101 root layout)")
    parser.add_argument("--per-puzzle", type=int, default=40, help="instances per puzzle")
    parser.add_argument("--seed", type=int, default=0, help="random seed; equal seeds give equal files")
    parser.add_argument(
        "--puzzles",
        nargs="+",
        default=None,
        help="all (ids 1..101) or puzzle ids: 1,2,3 (default: the 11 families)",
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="writer processes (default: CPU count)"
    )
    parser.add_argument("--traceback", action="store_true", help=cli.TRACEBACK_HELP)
    args = parser.parse_args(argv)

    def run() -> None:
        puzzle_ids = None if args.puzzles is None else cli.puzzle_ids_flag(args.puzzles, "--puzzles")
        try:
            ids = resolve_ids(puzzle_ids)
        except ValueError as e:
            raise ValueError(f"--puzzles: {e}") from None
        start = time.perf_counter()
        write_dataset(args.out, args.per_puzzle, args.seed, ids, workers=args.workers)
        shown = "1..101" if len(ids) == len(puzzles.ALL_PUZZLE_IDS) else ids
        print(
            f"wrote {args.per_puzzle} instances of puzzles {shown} to {args.out} "
            f"in {time.perf_counter() - start:.1f} s ({args.workers} workers)"
        )

    return cli.run(run, traceback=args.traceback)


if __name__ == "__main__":
    sys.exit(main())
