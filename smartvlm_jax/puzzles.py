"""Facts about the SMART-101 puzzles that every stage shares (SPEC sections 2, 3 and 8).

Plain immutable constants: the data reader, the reasoner head and the metrics all agree on them.
"""

ALL_PUZZLE_IDS: tuple[int, ...] = tuple(range(1, 102))

# Answer length of the decoders: sequence puzzles predict K positions, the others use position 0.
NUM_DECODE_STEPS = 10

# Puzzles whose answer is a list (decoded by a GRU for NUM_DECODE_STEPS steps).
SEQUENCE_PUZZLES: frozenset[int] = frozenset({16, 18, 35, 39, 63, 100})

# Puzzles whose options are not numbers: O_acc compares the predicted value directly.
NON_NUMERIC_OPTION_PUZZLES: frozenset[int] = frozenset({32, 44, 51, 66, 68, 69, 82, 84, 95, 98})

# The puzzle (zero-shot) split of SPEC section 3.
PUZZLE_SPLIT_VAL: tuple[int, ...] = (7, 43, 64)
PUZZLE_SPLIT_TEST: tuple[int, ...] = (94, 95, 96, 97, 98, 99, 101, 61, 62, 65, 66, 67, *range(69, 78))

# The eight reported skill classes (the metadata's ninth type, "order", is not reported).
SKILL_CLASSES: tuple[str, ...] = (
    "counting",
    "math",
    "logic",
    "path",
    "algebra",
    "measure",
    "spatial",
    "pattern",
)


def is_sequence(puzzle_id: int) -> bool:
    """Whether the puzzle's answer is a sequence decoded over NUM_DECODE_STEPS positions."""
    return puzzle_id in SEQUENCE_PUZZLES
