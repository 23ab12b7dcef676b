"""The amino-acid tokenizer: ESM-2's 33 tokens, plus two orientation tokens for CLM.

Ids 0-32 are ESM-2's vocabulary in ESM-2's order, so an MLM checkpoint pairs with
``transformers.EsmTokenizer``. Ids 33 and 34 are ProGen2's terminus markers ``1``
(N-terminus) and ``2`` (C-terminus): a CLM reads ``1 M K T ... 2`` forward and
``2 ... T K M 1`` for a reversed sequence.

The corpus stores residues only (no specials): framing is the dataset's job, so
the same ``.bin/.idx`` serves CLM, reversed CLM and MLM.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

import numpy as np

ESM2_VOCAB: tuple[str, ...] = (
    "<cls>",
    "<pad>",
    "<eos>",
    "<unk>",
    "L",
    "A",
    "G",
    "V",
    "S",
    "E",
    "R",
    "T",
    "I",
    "D",
    "P",
    "K",
    "Q",
    "N",
    "F",
    "Y",
    "M",
    "H",
    "W",
    "C",
    "X",
    "B",
    "U",
    "Z",
    "O",
    ".",
    "-",
    "<null_1>",
    "<mask>",
)
"""ESM-2's vocabulary, index = token id (fair-esm ``Alphabet.from_architecture("ESM-1b")``)."""

ORIENTATION_TOKENS: tuple[str, ...] = ("1", "2")
"""ProGen2's terminus markers: ``1`` = N-terminus, ``2`` = C-terminus."""

VOCAB: tuple[str, ...] = ESM2_VOCAB + ORIENTATION_TOKENS

RESIDUES: str = "LAGVSERTIDPKQNFYMHWCXBUZO"
"""The 25 residue letters of ESM-2's vocabulary (20 standard, X, and the ambiguity/rare codes B U Z O)."""

STANDARD_AMINO_ACIDS: str = "LAGVSERTIDPKQNFYMHWC"
"""The 20 standard amino acids, in vocabulary order; MLM random replacements draw from these."""

UnknownPolicy = Literal["error", "unk", "skip"]


class InvalidSequenceError(ValueError):
    """A sequence holds a character outside the residue alphabet."""

    def __init__(self, character: str, position: int):
        self.character = character
        self.position = position
        super().__init__(f"invalid residue {character!r} at position {position + 1}")


def _build_lookup() -> np.ndarray:
    """Byte -> token id; 255 marks a byte that is not a residue. Lower case maps like upper case."""
    table = np.full(256, 255, dtype=np.uint8)
    for letter in RESIDUES:
        token_id = VOCAB.index(letter)
        table[ord(letter)] = token_id
        table[ord(letter.lower())] = token_id
    return table


_BYTE_LOOKUP = _build_lookup()
_BYTE_LOOKUP.flags.writeable = False


@dataclass(frozen=True)
class ProteinTokenizer:
    """Character-level protein tokenizer with named special tokens (no magic integers).

    Implements what megatron-core 0.16's datasets read from a tokenizer
    (``vocab_size``, ``eod``, ``pad``, ``mask``, ``cls``, ``unique_identifiers``).
    """

    unknown: UnknownPolicy = "error"
    """What to do with a character outside the alphabet: raise, map to ``<unk>``, or let the caller skip."""

    # ---- vocabulary -------------------------------------------------------------------------
    @property
    def vocab(self) -> tuple[str, ...]:
        return VOCAB

    @property
    def vocab_size(self) -> int:
        return len(VOCAB)

    @property
    def mlm_vocab_size(self) -> int:
        """Size of ESM-2's vocabulary, the part an MLM uses."""
        return len(ESM2_VOCAB)

    def token_to_id(self, token: str) -> int:
        return VOCAB.index(token)

    @property
    def cls(self) -> int:
        return VOCAB.index("<cls>")

    @property
    def pad(self) -> int:
        return VOCAB.index("<pad>")

    @property
    def eos(self) -> int:
        return VOCAB.index("<eos>")

    @property
    def eod(self) -> int:
        """End-of-document id megatron-core's GPT dataset uses between packed documents."""
        return self.eos

    @property
    def unk(self) -> int:
        return VOCAB.index("<unk>")

    @property
    def mask(self) -> int:
        return VOCAB.index("<mask>")

    @property
    def n_terminus(self) -> int:
        """``1``: marks the N-terminal end; opens a forward CLM sequence."""
        return VOCAB.index("1")

    @property
    def c_terminus(self) -> int:
        """``2``: marks the C-terminal end; opens a reversed CLM sequence."""
        return VOCAB.index("2")

    @property
    def residue_ids(self) -> np.ndarray:
        return np.array([VOCAB.index(c) for c in RESIDUES], dtype=np.int64)

    @property
    def standard_amino_acid_ids(self) -> np.ndarray:
        return np.array([VOCAB.index(c) for c in STANDARD_AMINO_ACIDS], dtype=np.int64)

    @property
    def special_ids(self) -> np.ndarray:
        residues = set(RESIDUES)
        return np.array([i for i, t in enumerate(VOCAB) if t not in residues], dtype=np.int64)

    @property
    def unique_identifiers(self) -> dict:
        """JSON-serialisable identity; megatron-core hashes it into its sample-index cache keys."""
        digest = hashlib.sha256("\n".join(VOCAB).encode()).hexdigest()[:16]
        return {"class": "megatron_plm.ProteinTokenizer", "vocab_sha256": digest}

    # ---- encoding ----------------------------------------------------------------------------
    @property
    def byte_lookup(self) -> np.ndarray:
        """256-entry byte -> id table (255 = not a residue); the preprocessing encoders use it."""
        return _BYTE_LOOKUP

    def encode(self, sequence: str | bytes) -> np.ndarray:
        """Residues -> ids (uint8), no specials. Lower case is upper-cased; trailing ``*`` are dropped."""
        raw = sequence.encode("ascii", errors="replace") if isinstance(sequence, str) else bytes(sequence)
        raw = raw.rstrip(b"*")
        ids = _BYTE_LOOKUP[np.frombuffer(raw, dtype=np.uint8)]
        bad = np.flatnonzero(ids == 255)
        if bad.size:
            if self.unknown == "unk":
                ids = ids.copy()
                ids[bad] = self.unk
            else:
                position = int(bad[0])
                character = sequence[position] if isinstance(sequence, str) else chr(raw[position])
                raise InvalidSequenceError(character, position)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(VOCAB[int(i)] for i in ids)

    # ---- framing (used by the datasets) ----------------------------------------------------------
    def frame_mlm(self, residue_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """``<cls> residues <eos>``, ESM-2's framing."""
        body = np.asarray(residue_ids, dtype=np.int64)
        return np.concatenate([[self.cls], body, [self.eos]]).astype(np.int64)

    def frame_clm(self, residue_ids: Sequence[int] | np.ndarray, *, reverse: bool = False) -> np.ndarray:
        """``1 residues 2`` (N->C), or ``2 reversed-residues 1`` when ``reverse`` (ProGen2's framing)."""
        body = np.asarray(residue_ids, dtype=np.int64)
        if reverse:
            return np.concatenate([[self.c_terminus], body[::-1], [self.n_terminus]]).astype(np.int64)
        return np.concatenate([[self.n_terminus], body, [self.c_terminus]]).astype(np.int64)


RESIDUES_TOKENIZER = ProteinTokenizer()
"""The residue vocabulary as one shared, immutable value: what evaluation and generation frame and encode
residues with, whatever tokenizer the model itself uses."""
