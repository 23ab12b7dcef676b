"""``megatron-plm tokenizer train``: learn a subword vocabulary (SentencePiece BPE or unigram) from FASTA files.

An offline step beside preprocessing: it reads the corpus once and writes a tokenizer directory atomically;
:mod:`megatron_plm.data.tokenizers.subword` then tokenizes with it everywhere."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from megatron_plm.data.tokenizers.protein import RESIDUES, VOCAB, InvalidSequenceError, ProteinTokenizer
from megatron_plm.data.tokenizers.subword import (
    META_FILE,
    OUTPUT_FILES,
    SENTENCEPIECE_FILE,
    TOKENIZER_FILE,
    ModelType,
    build_backend,
    RESIDUE_LETTERS,
    file_digest,
)
from megatron_plm.progress import Heartbeat
from megatron_plm.safe_io import check_owned_directory, publish_directory, staging_directory

MAX_SENTENCE = 8192
"""Residues per sentence handed to SentencePiece; longer proteins are fed in consecutive pieces."""


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
            text = RESIDUE_LETTERS[ids].tobytes().decode()
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
        meta["tokenizer_sha256"] = file_digest(staging / TOKENIZER_FILE)
        (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        publish_directory(staging, final, OUTPUT_FILES)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a directory this run created, holding only its files
        raise
    return meta
