"""Tiny CLM and MLM trained on a BPE corpus: export, transformers parity, per-residue perplexity, DMS."""

import itertools
import math

import numpy as np
import pytest

from conftest import REPO

from megatron_plm.data.preprocess.fasta import read_fasta
from megatron_plm.data.tokenizers.subword import SubwordTokenizer


@pytest.fixture(scope="module")
def subword_trained(runtime, subword_corpus, subword_tokenizers, tmp_path_factory):
    from megatron_plm.training.config import load_config
    from megatron_plm.training.trainer import train

    prefix, _, _ = subword_corpus
    root = tmp_path_factory.mktemp("subword_trained")
    out = {}
    for objective in ("clm", "mlm"):
        config = load_config(
            REPO / f"examples/configs/tiny_{objective}.yaml",
            [
                f"data.sources=[{{prefix: {prefix}}}]",
                f"data.tokenizer={subword_tokenizers['bpe']}",
                "data.reverse_prob=0",
                "data.seq_length=64",
                "training.train_iters=4",
                "training.eval_interval=0",
                "training.eval_iters=1",
                f"checkpoint.save={root / objective}",
                "checkpoint.init_from=null",
                "logging.log_interval=100",
            ],
        )
        out[objective] = (root / objective, train(config, runtime))
    return out


def held_out(sample_fasta, n=6, length=90):
    return [r.sequence.decode()[:length] for r in itertools.islice(read_fasta(sample_fasta), 9990, 9990 + n)]


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_trains_exports_and_transformers_reproduces_the_logits(
    runtime, subword_trained, subword_tokenizers, sample_fasta, tmp_path, objective
):
    from transformers import AutoTokenizer

    from megatron_plm.checkpoint.export import export_hf
    from megatron_plm.evaluation.model import load_scoring_model, pad_batch

    checkpoint, result = subword_trained[objective]
    tok = SubwordTokenizer.load(subword_tokenizers["bpe"])
    validation = result.validation[-1]
    assert math.isfinite(validation["loss"]) and validation["loss"] < math.log(tok.vocab_size) + 0.5
    # Per residue: the same summed loss over more units (a BPE token covers > 1 residue on average).
    assert validation["residues"] > validation["tokens"]
    assert validation["loss_per_residue"] == pytest.approx(
        validation["loss"] * validation["tokens"] / validation["residues"]
    )

    out = export_hf(checkpoint, tmp_path / "hf", runtime)
    sequences = held_out(sample_fasta)
    hf_tokenizer = AutoTokenizer.from_pretrained(out)
    frame = tok.frame_clm if objective == "clm" else tok.frame_mlm
    rows = [frame(tok.encode(s)) for s in sequences]
    closing = "2" if objective == "clm" else ""  # a CLM's text is a prompt: the closing terminus is written
    for sequence, row in zip(sequences, rows):
        assert hf_tokenizer(sequence + closing)["input_ids"] == row.tolist()
        assert hf_tokenizer.decode(row[1:-1]) == sequence
    ids, real = pad_batch(rows, tok.pad)
    if objective == "mlm":
        ids[:, 2:-2:5] = tok.mask
    ours, theirs = (load_scoring_model(path, runtime) for path in (checkpoint, out))
    assert ours.vocab_size == theirs.vocab_size == tok.vocab_size and isinstance(theirs.tokenizer, SubwordTokenizer)
    difference = (ours.log_probs(ids, real) - theirs.log_probs(ids, real))[real.bool()].abs().max().item()
    assert difference < 1e-4, difference


def test_mlm_masks_whole_subword_tokens(subword_corpus, subword_tokenizers):
    from megatron_plm.data.samples.builder import DataBuilder
    from megatron_plm.data.samples.config import DataConfig, DataSource
    from megatron_plm.data.samples.splits import Split

    prefix, _, _ = subword_corpus
    tok = SubwordTokenizer.load(subword_tokenizers["bpe"])
    config = DataConfig(
        sources=[DataSource(prefix=str(prefix))],
        packed=False,
        seq_length=64,
        tokenizer=str(subword_tokenizers["bpe"]),
    )
    data = DataBuilder(config, "mlm").build(Split.TRAIN, 64)
    batch = data.samples(np.arange(64))
    selected = batch["loss_mask"] > 0
    labels, tokens = batch["labels"][selected], batch["tokens"][selected]
    # Labels are whole pieces (multi-residue ones among them), never specials; corrupted positions hold
    # <mask>, a piece of standard residues, or the original piece.
    assert not np.isin(labels, tok.special_ids).any() and (tok.token_residues[labels] > 1).mean() > 0.3
    changed = tokens != labels
    assert np.isin(tokens[changed], np.r_[tok.mask, tok.standard_amino_acid_ids]).all()
    assert 0.7 < (tokens == tok.mask).mean() < 0.9 and 0.1 < selected[batch["segment_ids"] >= 0].mean() < 0.2


def test_perplexity_per_residue_and_dms_for_a_subword_clm(runtime, subword_trained, sample_fasta, shared_data):
    from megatron_plm.data.tokenizers.protein import ProteinTokenizer
    from megatron_plm.evaluation.dms import load_assays, score_assay
    from megatron_plm.evaluation.model import load_scoring_model
    from megatron_plm.evaluation.perplexity import corpus_perplexity, perplexity

    model = load_scoring_model(subword_trained["clm"][0], runtime)
    tok = model.tokenizer
    records = [(str(i), ProteinTokenizer().encode(s).astype(np.int64)) for i, s in enumerate(held_out(sample_fasta))]
    scores = perplexity(model, records)
    for score, (_, residues) in zip(scores, records):
        tokens = tok.encode_residue_ids(residues, np.array([len(residues)]))[0]
        assert score.tokens == len(tokens) + 1 and score.residues == len(residues) + 1  # + the end marker
    assert corpus_perplexity(scores, per_residue=True) < corpus_perplexity(scores)
    assay = load_assays(shared_data / "dms", ["SUMO1_HUMAN_Weile_2017"])[0]
    assay.mutants, assay.mutations, assay.scores = assay.mutants[:12], assay.mutations[:12], assay.scores[:12]
    scored = score_assay(model, assay)
    assert scored.shape == (12,) and np.isfinite(scored).all() and np.abs(scored).max() > 0


def test_dms_for_a_subword_mlm_masks_the_covering_token(runtime, subword_trained, shared_data):
    from megatron_plm.evaluation.dms import _subword_masked_marginals, load_assays
    from megatron_plm.evaluation.model import load_scoring_model

    model = load_scoring_model(subword_trained["mlm"][0], runtime)
    assay = load_assays(shared_data / "dms", ["SUMO1_HUMAN_Weile_2017"])[0]
    assay.mutants, assay.mutations, assay.scores = assay.mutants[:12], assay.mutations[:12], assay.scores[:12]
    scores = _subword_masked_marginals(model, assay)
    assert scores.shape == (12,) and np.isfinite(scores).all() and np.abs(scores).max() > 0
    # A "mutation" to the wild-type residue reads the same input twice: its score is exactly zero.
    wt, p, _ = assay.mutations[0][0]
    assay.mutations = [[(wt, p, wt)]]
    assert _subword_masked_marginals(model, assay)[0] == 0.0
