"""Subword tokenizers: trained with SentencePiece on the shipped sample, used through ``tokenizer.json``."""

import itertools

import numpy as np
import pytest

from megatron_plm.data.fasta import read_fasta
from megatron_plm.data.subword import SubwordTokenizer, SubwordTrainConfig, train_subword_tokenizer
from megatron_plm.data.tokenizer import VOCAB, ProteinTokenizer


@pytest.fixture(scope="session")
def subword_tokenizers(tmp_path_factory, sample_fasta):
    """A BPE (from a 2,000-sequence sample of the shipped corpus) and a unigram (300 sequences: its
    trainer is slow) vocabulary of 128 tokens."""
    root = tmp_path_factory.mktemp("tokenizers")
    out = {}
    for model_type, sample in (("bpe", 2000), ("unigram", 300)):
        train_subword_tokenizer(SubwordTrainConfig(inputs=[str(sample_fasta)], output=str(root / model_type),
                                                   model_type=model_type, vocab_size=128, sample_sequences=sample,
                                                   progress=False))  # fmt: skip
        out[model_type] = root / model_type
    return out


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_special_tokens_keep_their_ids(subword_tokenizers, model_type):
    residue = ProteinTokenizer()
    tok = SubwordTokenizer.load(subword_tokenizers[model_type])
    assert tok.vocab_size == 128 and tok.vocab[: len(VOCAB)] == VOCAB
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
    assert len(pieces) == 128 - len(VOCAB) and all(len(p) > 1 and set(p) <= set("LAGVSERTIDPKQNFYMHWCXBUZO")
                                                   for p in pieces)  # fmt: skip
    assert tok.token_dtype == np.uint8


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
        train_subword_tokenizer(SubwordTrainConfig(inputs=[str(fasta)], output=str(tmp_path / "tok"), vocab_size=64,
                                                   progress=False))  # fmt: skip
    assert not (tmp_path / "tok").exists()
