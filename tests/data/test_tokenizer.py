import json

import numpy as np
import pytest

from megatron_plm.data.tokenizers.hf import save_hf_tokenizer
from megatron_plm.data.tokenizers.protein import InvalidSequenceError, ProteinTokenizer

# ESM-2's alphabet as published (fair-esm Alphabet "ESM-1b"; shared/notes/paper-facts.md).
PUBLISHED_ESM2 = "<cls> <pad> <eos> <unk> L A G V S E R T I D P K Q N F Y M H W C X B U Z O . - <null_1> <mask>".split()


def test_vocabulary_is_esm2_then_orientation_tokens():
    tok = ProteinTokenizer()
    assert list(tok.vocab[:33]) == PUBLISHED_ESM2
    assert tok.vocab[tok.n_terminus] == "1" and tok.vocab[tok.c_terminus] == "2"
    assert (tok.cls, tok.pad, tok.eos, tok.unk, tok.mask) == tuple(
        PUBLISHED_ESM2.index(t) for t in ("<cls>", "<pad>", "<eos>", "<unk>", "<mask>")
    )
    assert tok.eod == tok.eos and tok.vocab_size == 35 and tok.mlm_vocab_size == 33
    json.dumps(tok.unique_identifiers)  # megatron hashes it into cache keys


def test_encode_normalises_case_and_stop_codon():
    tok = ProteinTokenizer()
    assert tok.decode(tok.encode("mkTAy*")) == "MKTAY"
    assert tok.encode(b"MKT").dtype == np.uint8


def test_invalid_character_policy():
    with pytest.raises(InvalidSequenceError, match=r"'J' at position 3"):
        ProteinTokenizer().encode("MKJT")
    unk = ProteinTokenizer(unknown="unk")
    assert unk.decode(unk.encode("MKJT")) == "MK<unk>T"


def test_framing_for_both_objectives():
    tok = ProteinTokenizer()
    ids = tok.encode("MKT")
    assert tok.decode(tok.frame_mlm(ids)) == "<cls>MKT<eos>"
    assert tok.decode(tok.frame_clm(ids)) == "1MKT2"
    assert tok.decode(tok.frame_clm(ids, reverse=True)) == "2TKM1"


def test_hf_mlm_tokenizer_matches_esm_tokenizer_and_ours(tmp_path, real_fasta):
    from transformers import AutoTokenizer, EsmTokenizer

    from megatron_plm.data.preprocess.fasta import read_fasta

    vocab = tmp_path / "esm2_vocab.txt"
    vocab.write_text("\n".join(PUBLISHED_ESM2) + "\n")
    reference = EsmTokenizer(str(vocab))
    save_hf_tokenizer(tmp_path / "mlm", "mlm")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "mlm")
    ours = ProteinTokenizer()
    records = [r for _, r in zip(range(50), read_fasta(real_fasta))]
    for record in records:
        text = record.sequence.decode()
        expected = ours.frame_mlm(ours.encode(text)).tolist()
        assert loaded(text)["input_ids"] == expected
        assert reference(text)["input_ids"] == expected


def test_hf_clm_tokenizer_encodes_prompts_and_decodes_plain_residues(tmp_path, sample_fasta):
    from transformers import AutoTokenizer

    from megatron_plm.data.preprocess.fasta import read_fasta

    save_hf_tokenizer(tmp_path / "clm", "clm")
    written = json.loads((tmp_path / "clm/tokenizer_config.json").read_text())
    assert written.get("auto_map") is None
    # Names transformers 4.x loads too (5.x writes TokenizersBackend; 4.x adds token_type_ids, which
    # GPT-NeoX's generate refuses): checked by hand with 4.57.6.
    assert written["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert written["model_input_names"] == ["input_ids", "attention_mask"]
    loaded = AutoTokenizer.from_pretrained(tmp_path / "clm")
    ours = ProteinTokenizer()
    assert set(loaded("MKT")) == {"input_ids", "attention_mask"}
    # Text is a prompt: the N-terminus and the residues, no C-terminus (a prompt is not a finished protein).
    assert loaded("MKTAYIAK")["input_ids"] == [ours.n_terminus] + ours.encode("MKTAYIAK").tolist()
    assert loaded.decode(loaded("MKTAYIAK")["input_ids"]) == "1MKTAYIAK"
    assert loaded.decode(loaded("MKTAYIAK")["input_ids"], skip_special_tokens=True) == "MKTAYIAK"
    assert (loaded.bos_token_id, loaded.eos_token_id) == (ours.n_terminus, ours.c_terminus)
    for _, record in zip(range(50), read_fasta(sample_fasta)):
        text = record.sequence.decode()
        whole = ours.frame_clm(ours.encode(text)).tolist()
        assert loaded(text)["input_ids"] == whole[:-1]
        assert loaded(text + "2")["input_ids"] == whole  # a whole protein, as training framed it
        assert loaded.decode(whole, skip_special_tokens=True) == text.upper()
    assert loaded("mkty*")["input_ids"] == ours.frame_clm(ours.encode("MKTY")).tolist()[:-1]
