"""Question tokenisation through transformers' own tokenizers, plus small vocabularies for tiny towers.

:class:`TextTokenizer` wraps the tokenizer a text tower was released with, built by transformers from the
tower's directory: ``SiglipTokenizer`` (sentencepiece ``spiece.model``) for SigLIP, ``BertTokenizer``
(``tokenizer.json`` or ``vocab.txt``, HF ``tokenizers`` WordPiece) for BERT. It is called the way the
reference calls it (SPEC section 4: padded and truncated to ``max_length``), so the ids are transformers'
by construction, never a re-implementation's.

``train_sentencepiece`` and ``write_wordpiece_vocab`` build tiny vocabularies for random towers (tests,
smoke runs), where the real SigLIP and BERT vocabularies cannot be downloaded.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import sentencepiece as spm

from smartvlm_jax.towers.bert import MAX_QLEN

SIGLIP_MAX_LENGTH = 64  # SPEC section 4: SigLIP questions are padded and truncated to 64 tokens


@dataclasses.dataclass(frozen=True)
class TokenizerKind:
    """The transformers class of one text tower kind and the files it can be built from."""

    class_name: str
    files: tuple[str, ...]  # any one of them suffices
    max_length: int  # used when the tokenizer's own model_max_length is absent or unbounded


KINDS = {
    "siglip": TokenizerKind("SiglipTokenizer", ("spiece.model",), SIGLIP_MAX_LENGTH),
    # The SMART baseline keeps MAX_QLEN token states whatever BERT's model_max_length (512) says.
    "bert": TokenizerKind("BertTokenizer", ("tokenizer.json", "vocab.txt"), MAX_QLEN),
}


def _hf_class(kind: str) -> Any:
    import transformers  # lazy: only text towers need it

    return getattr(transformers, KINDS[kind].class_name)


@dataclasses.dataclass
class TextTokenizer:
    """``list[str] -> np.int32 [B, max_length]``: a transformers tokenizer called as the reference does.

    ``hf``: a ``transformers`` tokenizer (``SiglipTokenizer`` / ``BertTokenizer``). Each text becomes
    its special-token-framed ids (SigLIP ``... </s>``; BERT ``[CLS] ... [SEP]``), truncated to
    ``max_length`` and padded with the pad id. Picklable (for grain workers): transformers' tokenizers
    pickle, SigLIP's by the absolute path of its ``spiece.model``, which must still exist where it is
    unpickled (a relative path given is resolved first: a worker may start in another directory).
    """

    kind: str
    hf: Any
    max_length: int

    @classmethod
    def from_dir(
        cls, path: str | os.PathLike, kind: str, max_length: int | None = None
    ) -> TextTokenizer | None:
        """The tokenizer of the ``kind`` ("siglip" | "bert") tower in ``path``; None when ``path`` has none
        of its files. ``max_length`` defaults to the tokenizer's ``model_max_length`` for SigLIP (64 in the
        release) and to ``MAX_QLEN`` (110) for BERT.

        Raises ``KeyError`` for a kind without a text tokenizer.
        """
        spec = KINDS[kind]
        path = os.path.abspath(path)  # SigLIP's pickles by its file's path: valid from any directory
        if not any(os.path.isfile(os.path.join(path, f)) for f in spec.files):
            return None
        hf = _hf_class(kind).from_pretrained(path)
        if max_length is None:
            own = getattr(hf, "model_max_length", None)
            sane = kind == "siglip" and isinstance(own, int) and 0 < own < 100_000
            max_length = own if sane else spec.max_length
        return cls(kind, hf, int(max_length))

    @classmethod
    def from_file(cls, file: str | os.PathLike, kind: str, **settings: Any) -> TextTokenizer:
        """A tokenizer from one vocabulary file (SigLIP: ``spiece.model``; BERT: ``vocab.txt``) and the
        transformers constructor's settings (``do_lower_case``, special tokens, ``max_length``): what random
        towers are given, and what version-1 converted directories recorded in ``towers.json``."""
        file = os.path.abspath(file)  # SigLIP's pickles by this path: valid from any directory
        max_length = int(settings.pop("max_length", KINDS[kind].max_length))
        settings.pop("max_input_chars_per_word", None)  # WordPiece's default (100); not a constructor arg
        if kind == "siglip":
            hf = _hf_class(kind)(vocab_file=file, model_max_length=max_length, **settings)
        else:
            hf = _hf_class(kind)(vocab=file, **settings)
        return cls(kind, hf, max_length)

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can emit (added tokens included)."""
        return len(self.hf)

    def save(self, out_dir: str | os.PathLike) -> None:
        """Writes the tokenizer's files (transformers ``save_pretrained``) into ``out_dir``."""
        self.hf.save_pretrained(os.fspath(out_dir))

    def __call__(self, texts: Sequence[str] | Iterable[str]) -> np.ndarray:
        """Texts -> int32 ids [B, max_length]; raises ``TypeError`` for a single string."""
        if isinstance(texts, str):
            raise TypeError("pass a list of strings, not a single string")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.max_length), np.int32)
        ids = self.hf(
            texts,
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        return np.asarray(ids, np.int32)


def train_sentencepiece(sentences: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 500) -> str:
    """Trains a small BPE sentencepiece model (pad 0, eos 1, unk 2, no bos) -> path of ``spiece.model``.

    For tests and the smoke run, where the real SigLIP vocabulary cannot be downloaded. The layout of the
    special ids follows the released SigLIP model so a ``SiglipTokenizer`` wraps it unchanged.
    """
    os.makedirs(out_dir, exist_ok=True)
    prefix = os.path.join(os.fspath(out_dir), "spiece")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(sentences)),
        model_prefix=prefix,
        model_type="bpe",
        vocab_size=vocab_size,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return prefix + ".model"


BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def write_wordpiece_vocab(
    sentences: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 500, lowercase: bool = True
) -> str:
    """Writes a whole-word BERT ``vocab.txt`` for ``sentences`` (tiny random BERT towers) -> its path.

    ``[PAD]`` is id 0 (BERT's ``pad_token_id``), then the other specials, then the words of BERT's basic
    tokenisation (HF ``tokenizers``' ``BertNormalizer`` + ``BertPreTokenizer``), most frequent first (ties
    alphabetical), up to ``vocab_size`` entries; words left out become ``[UNK]``. The analogue of
    :func:`train_sentencepiece` for smoke runs and tests. Raises ``ValueError`` when ``vocab_size`` leaves
    no room after the five specials.
    """
    from tokenizers import normalizers, pre_tokenizers  # comes with transformers

    if vocab_size <= len(BERT_SPECIALS):
        raise ValueError(f"vocab_size must exceed the {len(BERT_SPECIALS)} special tokens, got {vocab_size}")
    normalize = normalizers.BertNormalizer(lowercase=lowercase)
    split = pre_tokenizers.BertPreTokenizer()
    counts: dict[str, int] = {}
    for sentence in sentences:
        for word, _ in split.pre_tokenize_str(normalize.normalize_str(sentence)):
            counts[word] = counts.get(word, 0) + 1
    words = sorted((w for w in counts if w not in BERT_SPECIALS), key=lambda w: (-counts[w], w))
    path = os.path.join(os.fspath(out_dir), "vocab.txt")
    os.makedirs(os.fspath(out_dir), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(t + "\n" for t in (*BERT_SPECIALS, *words)[:vocab_size]))
    return path
