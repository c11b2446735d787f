"""Kosmos-G text tokenizer: SentencePiece pieces looked up in a fairseq ``Dictionary``.

The official ids are *not* SentencePiece ids: ``dict.txt`` is loaded into a fairseq dictionary
after its four specials (``<s> <pad> </s> <unk>``), and ``<mask>`` plus the Kosmos special
symbols are appended at the end. Every special id is computed from that rule, never hard-coded,
so tokenizers of other sizes work unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import TokenizerError
from ..safe_files import read_text, regular_file

if TYPE_CHECKING:  # annotation only: checkpoint.py never imports this module
    from .checkpoint import Checkpoint

MAX_TOKENIZER_FILE_BYTES = 64 << 20  # the release's files are 5 MB and 1 MB

SPM_FILENAME = "sentencepiece.bpe.model"
DICT_FILENAME = "dict.txt"

FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # Dictionary.__init__ order: bos, pad, eos, unk
# unilm/tasks/gpt_base.py: add_symbol("<mask>") then unilm/data/utils.py SPECIAL_SYMBOLS.
APPENDED_SYMBOLS = ("<mask>", "</doc>", "<image>", "</image>", "</chunk>", "</line>")


@dataclass
class FairseqDictionary:
    """The symbol table of ``fairseq.data.Dictionary``, built by the same rules."""

    symbols: list[str] = field(default_factory=list)
    indices: dict[str, int] = field(default_factory=dict)

    def add_symbol(self, word: str, overwrite: bool = False) -> int:
        if word in self.indices and not overwrite:
            return self.indices[word]
        self.indices[word] = len(self.symbols)
        self.symbols.append(word)
        return self.indices[word]

    def index(self, word: str) -> int:
        return self.indices.get(word, self.indices["<unk>"])

    def __len__(self) -> int:
        return len(self.symbols)

    @classmethod
    def from_dict_txt(cls, text: str, source: str = "dict.txt") -> FairseqDictionary:
        dictionary = cls()
        for special in FAIRSEQ_SPECIALS:
            dictionary.add_symbol(special)
        symbols, indices = dictionary.symbols, dictionary.indices  # 64k lines: no method call per line
        for line_no, line in enumerate(text.splitlines(), start=1):
            word, sep, count = line.rstrip().rpartition(" ")
            overwrite = count == "#fairseq:overwrite"
            if overwrite:
                word, sep, count = word.rpartition(" ")
            if not sep or not count.lstrip("-").isdigit():
                if not line.strip():
                    continue
                raise TokenizerError(
                    f"{source} line {line_no} is not '<piece> <count>': {line[:80]!r}. "
                    "Expected the fairseq dictionary from the Kosmos-G release (data/dict.txt)."
                )
            if word in indices and not overwrite:
                raise TokenizerError(f"{source} line {line_no}: duplicate piece {word!r}.")
            indices[word] = len(symbols)  # add_symbol(word, overwrite=True), inlined
            symbols.append(word)
        for symbol in APPENDED_SYMBOLS:
            dictionary.add_symbol(symbol)
        return dictionary


class KosmosGTokenizer:
    """Text -> fairseq ids exactly as the official ``AppModel.text_transform`` (no BOS/EOS)."""

    def __init__(self, spm_model: bytes, dict_txt: str, source: str = "<memory>"):
        import sentencepiece

        self.source = source
        self.spm_model_bytes = spm_model
        self.dict_txt = dict_txt
        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(spm_model)
        except Exception as exc:  # sentencepiece raises a bare RuntimeError/OSError
            raise TokenizerError(
                f"{source}: {SPM_FILENAME} is not a SentencePiece model ({exc}). "
                "Use the sentencepiece.bpe.model from the Kosmos-G release (data/)."
            ) from None
        self.dictionary = FairseqDictionary.from_dict_txt(dict_txt, source=f"{source}/{DICT_FILENAME}")
        self.bos_id = self.dictionary.index("<s>")
        self.pad_id = self.dictionary.index("<pad>")
        self.eos_id = self.dictionary.index("</s>")
        self.unk_id = self.dictionary.index("<unk>")
        self.boi_id = self.dictionary.index("<image>")
        self.eoi_id = self.dictionary.index("</image>")

    @property
    def vocab_size(self) -> int:
        return len(self.dictionary)

    def pieces(self, text: str) -> list[str]:
        return self.sp.encode(text, out_type=str)

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; pieces missing from the dictionary become ``<unk>``."""
        return [self.dictionary.index(piece) for piece in self.pieces(text)]

    @classmethod
    def from_files(cls, spm_path: str, dict_path: str) -> KosmosGTokenizer:
        spm_path = regular_file(spm_path, SPM_FILENAME, TokenizerError, max_bytes=MAX_TOKENIZER_FILE_BYTES)
        with open(spm_path, "rb") as handle:
            spm_model = handle.read(MAX_TOKENIZER_FILE_BYTES + 1)
        dict_txt = read_text(dict_path, DICT_FILENAME, TokenizerError, max_bytes=MAX_TOKENIZER_FILE_BYTES)
        return cls(spm_model, dict_txt, source=os.path.dirname(spm_path) or ".")

    @classmethod
    def from_dir(cls, directory: str) -> KosmosGTokenizer:
        spm_path = os.path.join(directory, SPM_FILENAME)
        dict_path = os.path.join(directory, DICT_FILENAME)
        missing = [p for p in (spm_path, dict_path) if not os.path.isfile(p)]
        if missing:
            raise TokenizerError(
                f"tokenizer files missing in {directory}: {', '.join(os.path.basename(p) for p in missing)}. "
                f"Put {SPM_FILENAME} and {DICT_FILENAME} from the Kosmos-G release (data/) there."
            )
        return cls.from_files(spm_path, dict_path)


def find_tokenizer_dir(candidates: list[str]) -> str | None:
    """First directory in ``candidates`` holding both tokenizer files."""
    for directory in candidates:
        if directory and all(
            os.path.isfile(os.path.join(directory, name)) for name in (SPM_FILENAME, DICT_FILENAME)
        ):
            return directory
    return None


def tokenizer_search_dirs(checkpoint_path: str, extra_dirs: list[str] = ()) -> list[str]:
    """The checkpoint's folder, its ``tokenizer/`` subfolder, then ``extra_dirs`` and theirs."""
    dirs = []
    for folder in [os.path.dirname(os.path.abspath(checkpoint_path)), *extra_dirs]:
        for candidate in (folder, os.path.join(folder, "tokenizer")):
            if candidate not in dirs:
                dirs.append(candidate)
    return dirs


def resolve_tokenizer(
    checkpoint: Checkpoint, tokenizer: str | KosmosGTokenizer | None, extra_dirs: list[str] = ()
) -> KosmosGTokenizer:
    """Explicit tokenizer, else the one embedded in a converted file, else files beside the checkpoint."""
    if isinstance(tokenizer, KosmosGTokenizer):
        return tokenizer
    if tokenizer:
        return KosmosGTokenizer.from_dir(tokenizer)
    if checkpoint.tokenizer_files is not None:
        spm, dict_txt = checkpoint.tokenizer_files
        return KosmosGTokenizer(spm, dict_txt, source=f"{checkpoint.path} (embedded)")
    searched = tokenizer_search_dirs(checkpoint.source_path or checkpoint.path, list(extra_dirs))
    found = find_tokenizer_dir(searched)
    if found is None:
        raise TokenizerError(
            f"no Kosmos-G tokenizer found for {checkpoint.source_path or checkpoint.path}. "
            f"Looked for {SPM_FILENAME} and "
            f"{DICT_FILENAME} in: {'; '.join(searched)}; and inside the checkpoint (only converted "
            "files carry one). Put the two files from the Kosmos-G release (data/) beside the "
            "checkpoint, or pass the folder holding them (--tokenizer DIR)."
        )
    return KosmosGTokenizer.from_dir(found)
