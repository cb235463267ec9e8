"""Question ids equal transformers' on fuzzed text, through every way a text tower is loaded (issue 15).

For SigLIP (``SiglipTokenizer``) and BERT (``BertTokenizer``), uncased and cased, an HF directory is written
by transformers, then read three ways: directly (``towers.load(hf_dir)``), after ``convert hf``, and after
a pickle round trip (grain workers). Each must give, for 3,000 fuzzed strings, the ids transformers' own
tokenizer from that directory gives when called as the reference calls it (padded and truncated to the
tower's length). Zero differences allowed.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil

import numpy as np
import pytest
import torch
import transformers

from smartvlm_jax import towers
from smartvlm_jax.convert import hf as convert_hf
from tests.support import tiny_towers
from tests.support.hf import hf_model

N_STRINGS = 3000

ASCII = tiny_towers.sentences(n=60, seed=3) + ["Hello", "WORLD", "x+y=10", "a_b-c", "don't", "it's 5:30pm"]
LATIN = ["café", "CAFÉ", "Résumé", "naïve", "Ñandú", "Straße", "ﬁne", "e\u0301", "Å", "øre", "Œuvre"]
GREEK = ["ΟΔΟΣ", "οδος", "Σίσυφος", "ΣΣ", "αβγ", "Ωmega", "μ", "ς"]
CJK = ["中国", "日本語", "한국어", "漢字テスト", "\u3000", "，", "。"]
EMOJI = ["🙂", "👍🏽", "👩\u200d💻", "🇫🇷", "❤️", "🧩"]
CONTROL = ["\x00", "\x07", "\t", "\n", "\r\n", "\x7f", "\x1b", "\u0085", "\u00a0", "\u2028"]
FORMAT = ["\u200b", "\u200c", "\u200d", "\ufeff", "\u00ad", "\u2060", "\u202e"]
PRIVATE = ["\ue000", "\uf8ff", "\U000f0000", "\ufffd"]
MARKER = ["\u2581", "\u2581\u2581", "x\u2581", "\u2581x"]
SPECIAL = ["</s>", "<unk>", "<pad>", "[CLS]", "[SEP]", "[MASK]", "[UNK]", "[PAD]", "[cls]", "<s>", "</ s>"]
PUNCT = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + ["…", "—", "«", "»", "¿", "¡"]
CATEGORIES = [ASCII, LATIN, GREEK, CJK, EMOJI, CONTROL, FORMAT, PRIVATE, MARKER, SPECIAL, PUNCT]
SEPARATORS = ["", " ", " ", "  ", "\t"]


def fuzz_strings(n: int, seed: int = 0) -> list[str]:
    """``n`` strings mixing every category; about 1 in 20 far longer than any tower's max_length."""
    rng = random.Random(seed)
    out = ["", " ", "</s>\u2581x", "a\ue000b", "ΟΔΟΣ", "ΟΔΟΣ ΣΟΦΟΣ", "[MASK]x[SEP]", "<unk>\u2581</s>"]
    while len(out) < n:
        k = rng.randint(60, 200) if rng.random() < 0.05 else rng.randint(1, 12)
        parts = []
        for _ in range(k):
            category = rng.choice(CATEGORIES)
            parts.append(rng.choice(category) + rng.choice(SEPARATORS))
        out.append("".join(parts))
    return out


STRINGS = fuzz_strings(N_STRINGS)


def _bert_vocab() -> list[str]:
    words = {w for s in ASCII for w in s.lower().replace("?", " ").split()} | {"hello", "world", "Hello"}
    extra = "a ##b b ο ##δ ##ο ##ς ##σ σ Ο ##Δ ##Ο ##Σ Σ cafe café CAFÉ resume ##é".split()
    extra += "中 国 日 本 ##s ##e x y 10 ##0 1".split()
    specials = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return list(dict.fromkeys(specials + sorted(words) + PUNCT + extra))  # ids are line numbers: no repeats


@pytest.fixture(scope="module", params=["siglip-uncased", "siglip-cased", "bert-uncased", "bert-cased"])
def hf_text_dir(request, tmp_path_factory) -> tuple[str, str]:
    """(kind, HF directory) with a tiny random text model and its tokenizer, both saved by transformers."""
    kind, case = request.param.split("-")
    lower = case == "uncased"
    root = tmp_path_factory.mktemp(request.param)
    path = str(root / "hf")
    if kind == "siglip":
        corpus = tiny_towers.sentences() + [" ".join(c) for c in (LATIN, GREEK, CJK, EMOJI, PUNCT)] * 5
        spiece = towers.train_sentencepiece(corpus, root / "spm", vocab_size=500)
        hf_model(towers.tiny_config("siglip_text_model")).save_pretrained(path)
        transformers.SiglipTokenizer(vocab_file=spiece, do_lower_case=lower).save_pretrained(path)
    else:
        vocab = root / "vocab.txt"
        vocab.write_text("".join(t + "\n" for t in _bert_vocab()), encoding="utf-8")
        config = {k: v for k, v in towers.tiny_config("bert").items() if k != "model_type"}
        torch.manual_seed(0)
        transformers.BertModel(transformers.BertConfig(**config)).save_pretrained(path)
        transformers.BertTokenizer(vocab=str(vocab), do_lower_case=lower).save_pretrained(path)
    return kind, path


def _reference_ids(path: str, max_length: int) -> np.ndarray:
    """What the reference does: transformers' tokenizer from the directory, padded and truncated."""
    tok = transformers.AutoTokenizer.from_pretrained(path)
    return np.asarray(
        tok(STRINGS, padding="max_length", max_length=max_length, truncation=True)["input_ids"], np.int32
    )


def test_fuzzed_ids_equal_transformers_everywhere(hf_text_dir, tmp_path):
    kind, path = hf_text_dir
    direct = towers.load(path, "text")
    expected_length = 64 if kind == "siglip" else 110
    assert direct.tokenizer.max_length == expected_length
    expected = _reference_ids(path, expected_length)
    converted = towers.load(convert_hf.convert(path, str(tmp_path / "converted")), "text")
    unpickled = pickle.loads(pickle.dumps(converted.tokenizer))
    for name, ids in [
        ("hf dir", direct.tokenize(STRINGS)),
        ("converted", converted.tokenize(STRINGS)),
        ("unpickled", unpickled(STRINGS)),
    ]:
        assert ids.dtype == np.int32 and ids.shape == expected.shape, name
        differ = np.flatnonzero((ids != expected).any(axis=1))
        assert differ.size == 0, f"{name}: {differ.size} strings differ, first {STRINGS[differ[0]]!r}"
    # The fuzz reaches what it is meant to: unknown ids, truncation, and (BERT) ## continuations.
    unk = direct.tokenizer.hf.unk_token_id
    pad = direct.tokenizer.hf.pad_token_id
    assert (expected == unk).any() and (expected[:, -2] != pad).any()  # [-2]: SigLIP pads with </s>


def test_version_1_converted_directories_still_load(hf_text_dir, tmp_path):
    """A converted directory written before the tokenizer became transformers' save_pretrained folder."""
    kind, path = hf_text_dir
    out = convert_hf.convert(path, str(tmp_path / "v2"))
    new = towers.load(out, "text")
    meta_file = os.path.join(out, "towers.json")
    with open(meta_file) as f:
        meta = json.load(f)
    hf = new.tokenizer.hf
    if kind == "siglip":
        shutil.copy(os.path.join(out, "tokenizer", "spiece.model"), out)
        settings = {"file": "spiece.model", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"}
    else:
        with open(os.path.join(out, "vocab.txt"), "w", encoding="utf-8") as f:
            f.write("".join(t + "\n" for t in sorted(hf.get_vocab(), key=hf.get_vocab().get)))
        settings = {
            "file": "vocab.txt",
            "tokenize_chinese_chars": True,
            "strip_accents": None,
            "max_input_chars_per_word": 100,
        }
    settings.update(max_length=new.tokenizer.max_length, do_lower_case=hf.do_lower_case)
    shutil.rmtree(os.path.join(out, "tokenizer"))
    meta.update(version=1)
    meta["parts"]["text"]["tokenizer"] = settings
    with open(meta_file, "w") as f:
        json.dump(meta, f)
    old = towers.load(out, "text")
    sample = STRINGS[:500]
    np.testing.assert_array_equal(old.tokenize(sample), new.tokenize(sample))


def test_tokenizer_refuses_a_single_string_and_takes_an_empty_list(hf_text_dir):
    _, path = hf_text_dir
    tok = towers.load(path, "text").tokenizer
    with pytest.raises(TypeError, match="list of strings"):
        tok("how many?")
    assert tok([]).shape == (0, tok.max_length)
