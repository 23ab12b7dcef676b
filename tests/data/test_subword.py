"""Subword tokenizers: trained with SentencePiece on the shipped sample, used through ``tokenizer.json``."""

import itertools

import numpy as np
import pytest

from megatron_plm.data.corpus import Corpus
from megatron_plm.data.preprocess.fasta import read_fasta
from megatron_plm.data.preprocess.tokenizer_training import SubwordTrainConfig, train_subword_tokenizer
from megatron_plm.data.tokenizers.subword import SubwordTokenizer
from megatron_plm.data.tokenizers.protein import VOCAB, ProteinTokenizer


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_special_tokens_keep_their_ids(subword_tokenizers, model_type):
    residue = ProteinTokenizer()
    tok = SubwordTokenizer.load(subword_tokenizers[model_type])
    size = {"bpe": 300, "unigram": 128}[model_type]
    assert tok.vocab_size == size and tok.vocab[: len(VOCAB)] == VOCAB
    for name in ("cls", "pad", "eos", "unk", "mask", "n_terminus", "c_terminus"):
        assert getattr(tok, name) == getattr(residue, name)
    # The HF backend (what preprocessing and the export use) agrees, and keeps specials whole.
    backend = tok.backend
    for token in ("<cls>", "<pad>", "<eos>", "<unk>", "<mask>", "1", "2"):
        assert backend.token_to_id(token) == residue.token_to_id(token)
    assert backend.encode("<cls>MKT<mask>2", add_special_tokens=False).ids[0] == residue.cls
    assert residue.mask in backend.encode("<cls>MKT<mask>2").ids
    # Multi-residue pieces exist and are made of residues only.
    pieces = tok.vocab[len(VOCAB) :]
    assert len(pieces) == size - len(VOCAB) and all(
        len(p) > 1 and set(p) <= set("LAGVSERTIDPKQNFYMHWCXBUZO") for p in pieces
    )
    assert tok.token_dtype == (np.uint16 if size > 256 else np.uint8)


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_round_trip_is_exact_on_real_sequences(subword_tokenizers, sample_fasta, model_type):
    tok = SubwordTokenizer.load(subword_tokenizers[model_type])
    residues = tokens = 0
    for record in itertools.islice(read_fasta(sample_fasta), 9000, 9300):  # beyond the training sample
        ids = tok.encode(record.sequence)
        assert tok.decode(ids) == record.sequence.decode()
        assert int(tok.token_residues[ids].sum()) == len(record.sequence)
        residues, tokens = residues + len(record.sequence), tokens + len(ids)
    assert residues / tokens > 1.2  # pieces are used
    assert tok.decode(tok.encode("mkta*")) == "MKTA"
    unk = SubwordTokenizer.load(subword_tokenizers[model_type], unknown="unk")
    assert unk.decode(unk.encode("MKJT")) == "MK<unk>T"


def test_invalid_residue_in_training_input_names_file_and_line(tmp_path):
    fasta = tmp_path / "bad.fasta"
    fasta.write_text(">a\nMKTAY\n>b\nMKJ\n")
    with pytest.raises(ValueError, match=r"bad.fasta:3 \(record 'b'\): invalid residue 'J'"):
        train_subword_tokenizer(
            SubwordTrainConfig(inputs=[str(fasta)], output=str(tmp_path / "tok"), vocab_size=64, progress=False)
        )
    assert not (tmp_path / "tok").exists()


def test_preprocessing_stores_subword_ids_in_the_smallest_dtype(subword_corpus, subword_tokenizers):
    prefix, fasta, summary = subword_corpus
    tok = SubwordTokenizer.load(subword_tokenizers["bpe"])
    corpus = Corpus.open(prefix)
    assert corpus.meta["tokenizer"] == tok.unique_identifiers and corpus.meta["token_dtype"] == "uint16"
    assert corpus.meta["vocab"] == list(tok.vocab) and corpus.meta["num_tokens"] == summary.tokens_written
    indexed = corpus.indexed_dataset()
    assert indexed.index.dtype == np.uint16
    records = list(read_fasta(fasta))
    assert len(indexed) == len(records) == 1500
    for i in (0, 1, 777, 1499):
        ids = indexed[i]
        assert tok.decode(ids) == records[i].sequence.decode() and list(ids) == list(tok.encode(records[i].sequence))
    assert summary.residues_written == sum(len(r.sequence) for r in records) > 1.3 * summary.tokens_written


def test_training_refuses_a_corpus_of_another_tokenizer(subword_corpus, subword_tokenizers, sample_corpus):
    from megatron_plm.data.samples.builder import DataBuilder
    from megatron_plm.data.samples.config import DataConfig, DataSource

    prefix, _, _ = subword_corpus
    with pytest.raises(
        ValueError, match=r"preprocessed with tokenizer .*SubwordTokenizer.* but the run uses .*Protein"
    ):
        DataBuilder(DataConfig(sources=[DataSource(prefix=str(prefix))]), "clm").corpus(str(prefix))
    other = DataConfig(sources=[DataSource(prefix=str(sample_corpus))], tokenizer=str(subword_tokenizers["unigram"]))
    with pytest.raises(
        ValueError, match=r"preprocessed with tokenizer .*ProteinTokenizer.* but the run uses .*unigram"
    ):
        DataBuilder(other, "clm").corpus(str(sample_corpus))
    same = DataConfig(sources=[DataSource(prefix=str(prefix))], tokenizer=str(subword_tokenizers["bpe"]))
    assert len(DataBuilder(same, "clm").corpus(str(prefix))) == 1500
    with pytest.raises(ValueError, match="reverse_prob must be 0 with a subword"):
        DataConfig(sources=[DataSource(prefix=str(prefix))], tokenizer="x", reverse_prob=0.5).validate("clm")


def test_unigram_training_reports_progress_while_sentencepiece_is_silent(real_fasta, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("MEGATRON_PLM_PROGRESS_INTERVAL", "0.05")
    config = SubwordTrainConfig(
        inputs=[str(real_fasta)],
        output=str(tmp_path / "tok"),
        model_type="unigram",
        vocab_size=64,
        sample_sequences=200,
    )
    meta = train_subword_tokenizer(config)
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("tokenizer train:")]
    assert any("; training the unigram (" in line for line in lines), lines
    assert "read" not in meta["trained_on"]  # the heartbeat's bookkeeping stays out of the tokenizer's meta
    silent = SubwordTrainConfig(**{**config.__dict__, "output": str(tmp_path / "quiet"), "progress": False})
    train_subword_tokenizer(silent)
    assert "tokenizer train:" not in capfd.readouterr().err
