"""Synthetic SMART-format puzzles: the project's embedded default dataset.

Writes the release's exact layout (`<out>/<pid>/puzzle_<pid>.csv`, `<out>/<pid>/img/*.png`, the release's
CSV header and quoting, PNGs of varying size, some RGBA with a transparent background) for eleven puzzle
ids that together exercise every answer-value rule of SPEC section 2. In every family the picture
determines the answer with big, high-contrast shapes (count circles, read a clock hand, name a shape,
list the filled boxes...), so a tiny model looking at ~32 px images can learn it. Deterministic for a seed.

    python -m smartvlm_jax.data.synthetic --out /tmp/smart_synth --per-puzzle 40 --seed 0
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import os
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

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
    if rng.random() < 0.3:  # a distractor "Impossible" (value 0) replaces the largest wrong option
        last = 4 if index != 4 else 3
        texts[last] = "Impossible"
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


def colour_word(rng: np.random.Generator) -> Puzzle:
    """Puzzle 39 (every character a letter): the colours of four discs spell a word (A red, B green...)."""
    im = _canvas(rng)
    d = ImageDraw.Draw(im)
    word = "".join("ABCD"[int(i)] for i in rng.integers(4, size=4))
    for letter, (x, y, r) in zip(word, _cells(im, 4), strict=True):
        _disc(d, x, y, r, LETTER_COLOURS["ABCD".index(letter)])
    cands = ["".join(p) for p in itertools.product("ABCD", repeat=4)]
    options, index = _options(rng, word, cands, sort=False)
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


def _save_png(im: Image.Image, path: str, rgba: bool) -> None:
    """Save as PNG; RGBA pictures make the white background transparent, as many release PNGs are."""
    if rgba:
        rgba_im = im.convert("RGBA")
        arr = np.asarray(rgba_im).copy()
        arr[(arr[..., :3] == 255).all(-1), 3] = 0
        im = Image.fromarray(arr, "RGBA")
    im.save(path, format="PNG")


def write_puzzle(out_dir: str, puzzle_id: int, per_puzzle: int, seed: int) -> None:
    """Write one puzzle's folder: CSV with the release header and `per_puzzle` instances, and their PNGs."""
    rng = np.random.default_rng([seed, puzzle_id])
    folder = os.path.join(out_dir, str(puzzle_id))
    os.makedirs(os.path.join(folder, "img"), exist_ok=True)
    with open(os.path.join(folder, f"puzzle_{puzzle_id}.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)  # QUOTE_MINIMAL: questions with commas are quoted, as in the release
        writer.writerow(CSV_HEADER)
        for k in range(1, per_puzzle + 1):
            question, im, options, index = FAMILIES[puzzle_id](rng)
            image = f"puzzle_{puzzle_id}_e_{k}.png"
            _save_png(im, os.path.join(folder, "img", image), rgba=bool(rng.random() < 0.3))
            # Some answers carry a trailing space, a known trait of the release.
            answer = LETTERS[index] + (" " if k % 7 == 0 else "")
            writer.writerow([k, question, image, *options, answer, "synthetic"])


def write_dataset(
    out_dir: str, per_puzzle: int, seed: int, puzzle_ids: Sequence[int] | None = None
) -> list[int]:
    """Write synthetic puzzles in the release layout under `out_dir`; returns the puzzle ids written."""
    ids = sorted(FAMILIES) if puzzle_ids is None else sorted(int(p) for p in puzzle_ids)
    unknown = [p for p in ids if p not in FAMILIES]
    if unknown:
        raise ValueError(f"no synthetic family for puzzle ids {unknown}; available: {sorted(FAMILIES)}")
    for pid in ids:
        write_puzzle(out_dir, pid, per_puzzle, seed)
    return ids


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="output folder (the SMART-101 root layout)")
    parser.add_argument("--per-puzzle", type=int, default=40, help="instances per puzzle")
    parser.add_argument("--seed", type=int, default=0, help="random seed; equal seeds give equal files")
    parser.add_argument(
        "--puzzles", type=int, nargs="*", default=None, help="puzzle ids (default: all families)"
    )
    args = parser.parse_args(argv)
    ids = write_dataset(args.out, args.per_puzzle, args.seed, args.puzzles)
    print(f"wrote {args.per_puzzle} instances of puzzles {ids} to {args.out}")


if __name__ == "__main__":
    main()
