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
import io
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Literal

import numpy as np

from megatron_plm.safe_io import check_owned_directory, publish_directory, read_json, reading, staging_directory
from megatron_plm.data.tokenizers.protein import (
    RESIDUES,
    STANDARD_AMINO_ACIDS,
    VOCAB,
    InvalidSequenceError,
    ProteinTokenizer,
)
from megatron_plm.progress import Heartbeat

ModelType = Literal["bpe", "unigram"]
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "tokenizer_meta.json"
SENTENCEPIECE_FILE = "sentencepiece.model"
OUTPUT_FILES = (SENTENCEPIECE_FILE, TOKENIZER_FILE, META_FILE)
"""What ``tokenizer train`` writes in its output directory, in the order they are put in place: an existing
directory may hold these (an earlier tokenizer, replaced) and nothing else (refused, never deleted)."""
MAX_SENTENCE = 8192
"""Residues per sentence handed to SentencePiece; longer proteins are fed in consecutive pieces."""
UNK_CHARACTER = "?"
"""What a residue-level ``<unk>`` (``--unknown unk``) becomes before subword encoding: not in the
vocabulary, so the subword tokenizer maps it to ``<unk>`` too."""


@dataclass(kw_only=True)
class SubwordTrainConfig:
    inputs: list[str] = field(metadata={"cli": {"flags": ["--input"], "action": "extend"}})
    """FASTA files (plain or gzip)."""
    output: str
    """Tokenizer directory to write (``tokenizer.json``, ``sentencepiece.model``, ``tokenizer_meta.json``)."""
    model_type: ModelType = "bpe"
    """SentencePiece's algorithm: byte-pair merges (as ProtGPT2) or a unigram LM."""
    vocab_size: int = field(default=1024, metadata={"cli": {"required": True}})
    """Total vocabulary, the 35 fixed tokens included."""
    sample_sequences: int = 1_000_000
    """SentencePiece's ``input_sentence_size``: a uniform sample of this many sentences is kept in memory."""
    max_piece_length: int = 16
    """Longest piece in residues."""
    seed: int = 0
    """Seed of the input sample."""
    threads: int = 1
    """SentencePiece training threads."""
    progress: bool = True
    """Progress lines while reading and training."""

    def validate(self) -> None:
        if not self.inputs:
            raise ValueError("give at least one --input FASTA")
        if self.model_type not in ("bpe", "unigram"):
            raise ValueError(f"--model-type must be bpe or unigram, got {self.model_type!r}")
        if self.vocab_size < len(VOCAB) + 8:
            raise ValueError(
                f"--vocab-size must be at least {len(VOCAB) + 8} (the {len(VOCAB)} fixed tokens + pieces), "
                f"got {self.vocab_size}"
            )
        if self.vocab_size > 65535:
            raise ValueError(f"--vocab-size must be at most 65535 (corpora store uint16 ids), got {self.vocab_size}")
        if self.sample_sequences < 1:
            raise ValueError(f"--sample-sequences must be >= 1, got {self.sample_sequences}")
        if not 2 <= self.max_piece_length <= 16:
            raise ValueError(f"--max-piece-length must be in 2..16, got {self.max_piece_length}")


def _sentences(paths: list[str], progress: bool, counts: dict) -> Iterator[str]:
    """Normalised residue strings of every record, cut at MAX_SENTENCE; counts what was fed. An error or an
    interrupt stops the feed and is kept in ``counts["error"]``: SentencePiece would wrap it in its own."""
    try:
        yield from _feed(paths, progress, counts)
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM (the CLI turns it into one)
        counts["error"] = interrupt


def _feed(paths: list[str], progress: bool, counts: dict) -> Iterator[str]:
    from megatron_plm.data.preprocess.fasta import read_fasta

    residue = ProteinTokenizer()
    last = time.monotonic()
    for path in paths:
        for record in read_fasta(path):
            try:
                ids = residue.encode(record.sequence)
            except InvalidSequenceError as error:  # SentencePiece would wrap it: stop, raise after it returns
                counts["error"] = ValueError(f"{path}:{record.line} (record {record.record_id!r}): {error}")
                return
            text = _LETTERS[ids].tobytes().decode()
            counts["sequences"] += 1
            counts["residues"] += len(text)
            for start in range(0, len(text), MAX_SENTENCE):
                yield text[start : start + MAX_SENTENCE]
            if progress and time.monotonic() - last > 5:  # (the heartbeat takes over once all is read)
                last = time.monotonic()
                print(
                    f"tokenizer train: read {counts['sequences']:,} sequences, {counts['residues']:,} residues",
                    file=sys.stderr,
                    flush=True,
                )
    counts["read"] = True


def train_subword_tokenizer(cfg: SubwordTrainConfig) -> dict:
    """Learn a SentencePiece vocabulary and write the tokenizer directory atomically; returns its meta."""
    import sentencepiece as spm

    cfg.validate()
    for path in cfg.inputs:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"input file {path} does not exist")
    check_owned_directory(cfg.output, OUTPUT_FILES, what="--output")
    from megatron_plm.outputs import prepare_output  # the staging beside it can be written: before training

    try:
        prepare_output(Path(cfg.output).with_name(Path(cfg.output).name + ".tmp"), what="--output")
    except ValueError as error:
        reason = str(error).split(" cannot be written ", 1)[-1]
        raise ValueError(f"--output {cfg.output} cannot be written {reason}") from None
    counts = {"sequences": 0, "residues": 0}
    model = io.BytesIO()
    spm.set_random_generator_seed(cfg.seed)  # the reservoir sample
    started = time.perf_counter()

    # SentencePiece counts its <unk> and the single residues it saw; ask for enough pieces that the
    # multi-residue ones fill our vocabulary whatever subset of the 25 letters the data has.
    def describe() -> str:  # SentencePiece reads the sample, then trains without a word (unigram: minutes)
        read = f"read {counts['sequences']:,} sequences, {counts['residues']:,} residues"
        return f"tokenizer train: {read}; " + ("training the " + cfg.model_type if counts.get("read") else "reading")

    try:
        with Heartbeat(describe, enabled=cfg.progress):
            spm.SentencePieceTrainer.train(
                sentence_iterator=_sentences(cfg.inputs, cfg.progress, counts),
                model_writer=model,
                model_type=cfg.model_type,
                vocab_size=cfg.vocab_size - len(VOCAB) + 1 + len(RESIDUES),
                hard_vocab_limit=False,
                add_dummy_prefix=False,
                remove_extra_whitespaces=False,
                normalization_rule_name="identity",
                split_by_whitespace=False,
                character_coverage=1.0,
                unk_id=0,
                bos_id=-1,
                eos_id=-1,
                pad_id=-1,
                input_sentence_size=cfg.sample_sequences,
                shuffle_input_sentence=True,
                max_sentence_length=MAX_SENTENCE,
                max_sentencepiece_length=cfg.max_piece_length,
                num_threads=cfg.threads,
                minloglevel=2,
            )
    except RuntimeError as error:  # an input error stops the feed; SentencePiece then reports its own
        if "error" in counts:
            raise counts.pop("error") from None
        raise ValueError(f"SentencePiece could not train on {cfg.inputs}: {error}") from None
    if "error" in counts:
        raise counts.pop("error")
    counts.pop("read", None)
    seconds = time.perf_counter() - started
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    backend = build_backend(cfg.model_type, pieces, cfg.vocab_size)
    meta = {
        "format_version": 1,
        "model_type": cfg.model_type,
        "vocab_size": backend.get_vocab_size(),
        "requested_vocab_size": cfg.vocab_size,
        "fixed_tokens": list(VOCAB),
        "trained_on": {
            "inputs": [os.path.abspath(p) for p in cfg.inputs],
            **counts,
            "sample_sequences": cfg.sample_sequences,
            "max_sentence": MAX_SENTENCE,
            "max_piece_length": cfg.max_piece_length,
            "seed": cfg.seed,
            "seconds": round(seconds, 1),
        },
    }
    final = Path(cfg.output)
    check_owned_directory(final, OUTPUT_FILES, what="--output")  # again: the directory may have changed meanwhile
    staging = staging_directory(final, OUTPUT_FILES)
    try:
        backend.save(str(staging / TOKENIZER_FILE))
        (staging / SENTENCEPIECE_FILE).write_bytes(model.getvalue())
        meta["tokenizer_sha256"] = _file_digest(staging / TOKENIZER_FILE)
        (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        publish_directory(staging, final, OUTPUT_FILES)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a directory this run created, holding only its files
        raise
    return meta


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


def _file_digest(path: Path) -> str:
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
            _digest=_file_digest(path),
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
        text = _LETTERS[np.asarray(residue_ids, dtype=np.int64)].tobytes().decode()
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


_LETTERS = _letters()


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
