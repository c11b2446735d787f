"""The fairseq dictionary rule on the real Kosmos-G tokenizer and on malformed files."""

from __future__ import annotations

import json

import pytest

from support import require_shared

from kosmosg_core import KosmosGTokenizer, TokenizerError
from kosmosg_core.kosmosg.tokenizer import FairseqDictionary


@pytest.fixture(scope="module")
def real_tokenizer():
    return KosmosGTokenizer.from_dir(str(require_shared("reference", "kosmos-g-tokenizer")))


def test_real_tokenizer_gives_expected_ids(real_tokenizer):
    expected = json.loads((require_shared("reference", "kosmos-g-tokenizer", "expected_ids.json")).read_text())
    assert real_tokenizer.vocab_size == expected["vocab_size"]
    for symbol, index in expected["special_ids"].items():
        assert real_tokenizer.dictionary.index(symbol) == index, symbol
    assert (real_tokenizer.boi_id, real_tokenizer.eoi_id) == (64003, 64004)
    assert expected["examples"]
    for example in expected["examples"]:
        if "pieces" in example:
            assert real_tokenizer.pieces(example["text"]) == example["pieces"], example["text"]
        assert real_tokenizer.encode(example["text"]) == example["ids"], example["text"]


def test_fixture_tokenizer_maps_unknown_characters_to_unk(official_fixture):
    tokenizer = KosmosGTokenizer.from_dir(str(official_fixture))
    # fixture README: sentencepiece <unk> must become fairseq <unk> (3), never <pad> (1)
    assert tokenizer.encode("a naïve café sign № 7 in Zürich") == [
        5, 4, 12, 22, 3, 232, 95, 23, 3, 4, 123, 138, 12, 4, 3, 30, 4, 3, 11, 4, 3, 28, 106, 64]
    assert tokenizer.boi_id == 303 and tokenizer.vocab_size == 307


def test_special_ids_come_from_the_dictionary():
    dictionary = FairseqDictionary.from_dict_txt("▁a 1\n▁b 1\n<image> 1")
    # <image> already in dict.txt keeps its line's id; the appended symbols skip it
    assert dictionary.index("<image>") == 6
    assert dictionary.index("</image>") == 9
    assert dictionary.index("missing") == 3


def test_duplicate_and_malformed_dict_lines_are_named():
    with pytest.raises(TokenizerError, match="line 2: duplicate piece"):
        FairseqDictionary.from_dict_txt("▁a 1\n▁a 1")
    FairseqDictionary.from_dict_txt("▁a 1\n▁a 1 #fairseq:overwrite")
    with pytest.raises(TokenizerError, match="line 1 is not '<piece> <count>'"):
        FairseqDictionary.from_dict_txt("justoneword")


def test_missing_and_broken_tokenizer_files(tmp_path, official_fixture):
    with pytest.raises(TokenizerError, match="tokenizer files missing.*sentencepiece.bpe.model, dict.txt"):
        KosmosGTokenizer.from_dir(str(tmp_path))
    (tmp_path / "sentencepiece.bpe.model").write_bytes(b"not a model")
    (tmp_path / "dict.txt").write_text((official_fixture / "dict.txt").read_text())
    with pytest.raises(TokenizerError, match="is not a SentencePiece model"):
        KosmosGTokenizer.from_dir(str(tmp_path))
