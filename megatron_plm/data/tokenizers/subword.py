"""Subword protein tokenizers: a SentencePiece vocabulary (BPE or unigram) beside the residue tokenizer.

SentencePiece only *learns* the vocabulary. What tokenizes, everywhere (preprocessing, training data,
evaluation, the exported ``transformers`` tokenizer), is one HF ``tokenizers`` file, ``tokenizer.json``,
built from the learned pieces, so the ids a model was trained on are the ids ``AutoTokenizer`` gives.

Ids: 0-34 are the residue tokenizer's vocabulary unchanged (``<cls> <pad> <eos> <unk>``, the 25
single residues, ``. - <null_1> <mask>``, the terminus markers ``1`` ``2``), so specials, masking and
framing keep their ids and a single residue has the same id under both tokenizers; multi-residue
pieces follow from 35 in SentencePiece's order (merge order for BPE, score order for unigram).

How sequences are fed: each record is normalised by the residue tokenizer (upper case, trailing ``*``
dropped, invalid characters rejected) and handed over as one "sentence" of residue letters, with no
whitespace added or removed (``add_dummy_prefix`` off, identity normalisation, no ``▁``), cut into
pieces of at most ``MAX_SENTENCE`` residues (SentencePiece would silently drop longer ones). Memory is
bounded by ``sample_sequences``: SentencePiece keeps a uniform reservoir sample of that many sentences.

No torch here: preprocessing imports this module.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

import numpy as np

from megatron_plm.safe_io import read_json, reading
from megatron_plm.data.tokenizers.protein import (
    RESIDUES,
    STANDARD_AMINO_ACIDS,
    VOCAB,
    ProteinTokenizer,
)

ModelType = Literal["bpe", "unigram"]
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "tokenizer_meta.json"
SENTENCEPIECE_FILE = "sentencepiece.model"
OUTPUT_FILES = (SENTENCEPIECE_FILE, TOKENIZER_FILE, META_FILE)
"""What ``tokenizer train`` writes in its output directory, in the order they are put in place: an existing
directory may hold these (an earlier tokenizer, replaced) and nothing else (refused, never deleted)."""
UNK_CHARACTER = "?"
"""What a residue-level ``<unk>`` (``--unknown unk``) becomes before subword encoding: not in the
vocabulary, so the subword tokenizer maps it to ``<unk>`` too."""


def build_backend(model_type: ModelType, pieces: list[tuple[str, float]], vocab_size: int):
    """An HF ``tokenizers.Tokenizer`` over our ids from SentencePiece's ``(piece, score)`` list."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers

    alphabet = set(RESIDUES)
    multi = [(p, s) for p, s in pieces if len(p) > 1 and p != "<unk>"]
    for piece, _ in multi:
        if not set(piece) <= alphabet:
            raise ValueError(f"SentencePiece learned the piece {piece!r}, which is not made of residues")
    multi = multi[: vocab_size - len(VOCAB)]
    vocab = list(VOCAB) + [p for p, _ in multi]
    if model_type == "bpe":
        ids = {token: i for i, token in enumerate(vocab)}
        # Every split of a piece into two vocabulary entries is a merge, ranked by the piece's rank, so
        # that the pairs BPE may join are exactly the ones SentencePiece may join.
        merges = []
        for piece, _ in multi:
            splits = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in ids and piece[k:] in ids]
            merges += sorted(splits, key=lambda pair: (ids[pair[0]], ids[pair[1]]))
        model = models.BPE(vocab=ids, merges=merges, unk_token="<unk>")
    else:
        scores = {p: s for p, s in pieces}
        floor = min(s for _, s in pieces) - 10.0  # letters SentencePiece never saw: usable, but unlikely
        entries = [(t, scores.get(t, floor) if t in alphabet else 0.0) for t in VOCAB] + multi
        model = models.Unigram(entries, unk_id=VOCAB.index("<unk>"), byte_fallback=False)
    backend = Tokenizer(model)
    backend.normalizer = normalizers.Sequence(
        [normalizers.Replace(Regex(r"\*+$"), "")] + [normalizers.Replace(c.lower(), c) for c in RESIDUES]
    )
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([t for t in VOCAB if t not in alphabet])
    return backend


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@dataclass(frozen=True)
class SubwordTokenizer(ProteinTokenizer):
    """A trained subword vocabulary with the residue tokenizer's interface (and its special ids).

    ``encode`` takes residues and gives subword ids; ``token_residues`` says how many residues each id
    covers (framing tokens count one), the unit of per-residue perplexity.
    """

    directory: str = ""
    model_type: str = field(default="bpe", compare=False)
    _pieces: tuple = field(default=(), repr=False, compare=False)
    _backend: object = field(default=None, repr=False, compare=False)
    _digest: str = field(default="", repr=False, compare=False)

    @classmethod
    def load(cls, directory: str | os.PathLike, unknown="error") -> "SubwordTokenizer":
        from tokenizers import Tokenizer

        path = Path(directory) / TOKENIZER_FILE
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: is {os.fspath(directory)!r} a 'megatron-plm tokenizer train' output?"
            )
        meta_path = Path(directory) / META_FILE
        fix = "train the tokenizer again (megatron-plm tokenizer train)"
        meta = read_json(meta_path, fix=fix) if meta_path.exists() else {}
        with reading(path, fix):
            backend = Tokenizer.from_file(str(path))
            vocab = backend.get_vocab(with_added_tokens=True)
            pieces = [""] * len(vocab)
            for token, i in vocab.items():
                pieces[i] = token
            if tuple(pieces[: len(VOCAB)]) != VOCAB:
                raise ValueError(f"ids 0-{len(VOCAB) - 1} are not the residue tokenizer's tokens")
        return cls(
            unknown,
            directory=os.fspath(directory),
            model_type=meta.get("model_type", "?"),
            _pieces=tuple(pieces),
            _backend=backend,
            _digest=file_digest(path),
        )

    @property
    def vocab(self) -> tuple[str, ...]:
        return self._pieces

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    @property
    def mlm_vocab_size(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> int:
        return self._pieces.index(token)

    @property
    def residue_ids(self) -> np.ndarray:
        """Every id that stands for residues (single or multi): what MLM may select."""
        alphabet = set(RESIDUES)
        return np.array([i for i, t in enumerate(self._pieces) if set(t) <= alphabet], dtype=np.int64)

    @property
    def standard_amino_acid_ids(self) -> np.ndarray:
        """Pieces made of standard amino acids only: MLM's random replacements draw from these."""
        standard = set(STANDARD_AMINO_ACIDS)
        return np.array([i for i, t in enumerate(self._pieces) if set(t) <= standard], dtype=np.int64)

    @property
    def special_ids(self) -> np.ndarray:
        residue = set(self.residue_ids.tolist())
        return np.array([i for i in range(self.vocab_size) if i not in residue], dtype=np.int64)

    @property
    def token_residues(self) -> np.ndarray:
        """Residues covered by each id; specials and framing count one (as under the residue tokenizer)."""
        alphabet = set(RESIDUES)
        return np.array([len(t) if set(t) <= alphabet else 1 for t in self._pieces], dtype=np.int64)

    @property
    def unique_identifiers(self) -> dict:
        return {
            "class": "megatron_plm.SubwordTokenizer",
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "tokenizer_sha256": self._digest,
        }

    @property
    def backend(self):
        """The HF ``tokenizers.Tokenizer`` (no special tokens added on encode)."""
        return self._backend

    @property
    def token_dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if self.vocab_size <= 256 else np.uint16)

    def encode(self, sequence: str | bytes) -> np.ndarray:
        """Residues -> subword ids, no specials; normalisation and invalid characters as the residue tokenizer."""
        residue_ids = ProteinTokenizer(self.unknown).encode(sequence)
        return self.encode_residue_ids(residue_ids, np.array([len(residue_ids)]))[0]

    def encode_residue_ids(self, residue_ids: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Concatenated residue ids of ``len(lengths)`` documents -> (concatenated subword ids, lengths)."""
        text = RESIDUE_LETTERS[np.asarray(residue_ids, dtype=np.int64)].tobytes().decode()
        ends = np.cumsum(lengths)
        documents = [text[end - n : end] for n, end in zip(lengths.tolist(), ends.tolist())]
        # One call per document: encode_batch's thread pool was 3x slower on a shared 2-core machine.
        encodings = [self._backend.encode(document, add_special_tokens=False) for document in documents]
        new_lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
        ids = np.fromiter((i for e in encodings for i in e.ids), dtype=np.int64, count=int(new_lengths.sum()))
        return ids, new_lengths

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self._pieces[int(i)] for i in ids)


def _letters() -> np.ndarray:
    table = np.frombuffer(UNK_CHARACTER.encode() * len(VOCAB), dtype=np.uint8).copy()
    for letter in RESIDUES:
        table[VOCAB.index(letter)] = ord(letter)
    return table


RESIDUE_LETTERS = _letters()


def load_tokenizer(directory: str | os.PathLike | None, unknown="error") -> ProteinTokenizer:
    """The residue tokenizer (``None``) or the subword tokenizer in ``directory``."""
    if directory is None:
        return ProteinTokenizer(unknown)
    return SubwordTokenizer.load(directory, unknown)


def token_residues(tokenizer: ProteinTokenizer) -> np.ndarray:
    """Residues per id for either tokenizer (all ones for the residue tokenizer)."""
    if isinstance(tokenizer, SubwordTokenizer):
        return tokenizer.token_residues
    return np.ones(tokenizer.vocab_size, dtype=np.int64)
