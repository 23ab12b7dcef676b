"""The family workflow end to end at test size: the ColabFold alignment of TEM-1 -> corpus with
80%-identity clusters -> a small MLM trained on it -> zero-shot Spearman on the TEM-1 assay, which
must beat the unigram floor and stand beside the alignment's own profile."""

import numpy as np
import pytest

from conftest import REPO

ASSAY = "BLAT_ECOLX_Stiffler_2015"
FAMILY_MLM = [
    "name=family-mlm",
    "objective=mlm",
    "model.num_layers=2",
    "model.hidden_size=64",
    "model.num_attention_heads=4",
    "data.seq_length=64",
    "data.packed=false",
    "data.masking.mask_ratio=0.2",
    "data.split_weights=[0.95,0.05,0.0]",
    "training.train_iters=300",
    "training.global_batch_size=64",
    "training.micro_batch_size=64",
    "training.eval_interval=0",
    "training.eval_iters=4",
    "optimizer.lr=0.002",
    "optimizer.min_lr=0.0002",
    "optimizer.warmup_iters=20",
    "optimizer.weight_decay=0.01",
    "logging.log_interval=100",
]
"""The settings of ``examples/family/mlm.yaml`` as measured there, written out so the example can change
on its own (the test checks what the issue asked for: a tiny family run beating the unigram floor)."""


@pytest.fixture(scope="module")
def blat(shared_data):
    """ColabFold's TEM-1 alignment and its profile, built once for the module (the profile's 80%-identity
    weights are seconds of matrix products)."""
    from megatron_plm.data.preprocess.msa import read_msa
    from megatron_plm.evaluation.profile import build_profile

    alignment = read_msa(shared_data / "family/BLAT_ECOLX_ColabFold_2202.a3m", "a3m")
    return alignment, build_profile(alignment)


@pytest.mark.slow
def test_family_mlm_beats_the_unigram_floor(runtime, shared_data, blat, tmp_path):
    from megatron_plm.training.config import load_config
    from megatron_plm.data.preprocess.fasta import read_fasta
    from megatron_plm.data.preprocess.homologs import greedy_clusters, homolog_weights, write_weights
    from megatron_plm.data.preprocess.pipeline import PreprocessConfig, preprocess
    from megatron_plm.evaluation.dms import evaluate_assays, load_assays, residue_frequencies
    from megatron_plm.evaluation.model import load_scoring_model
    from megatron_plm.training.trainer import train

    a3m = shared_data / "family/BLAT_ECOLX_ColabFold_2202.a3m"
    alignment, profile = blat
    weights = homolog_weights(alignment)
    files = write_weights(tmp_path / "blat80", alignment.ids, weights, greedy_clusters(weights, alignment.ids))
    preprocess(
        PreprocessConfig(
            inputs=[str(a3m)], output_prefix=str(tmp_path / "blat"), clusters=files["clusters"], progress=False
        )
    )
    config = load_config(
        None, [*FAMILY_MLM, f"data.sources=[{{prefix: {tmp_path / 'blat'}}}]", f"checkpoint.save={tmp_path / 'mlm'}"]
    )
    train(config, runtime)
    model = load_scoring_model(tmp_path / "mlm", runtime)
    assays = load_assays(shared_data / "dms", [ASSAY])
    frequencies = residue_frequencies(
        r.sequence.decode() for r in read_fasta(REPO / "data/uniref90_esm2_pretraining_sample_10k.fasta.gz")
    )
    (result,) = evaluate_assays(model, assays, frequencies, profile=profile)
    assert len(result.scores) == 4996 and np.isfinite(result.scores).all()
    # The same run as `examples/family/run.sh mlm` (measured there: 0.253; at 40 steps it was 0.058, still
    # at the floor, so the test trains the example's full 300 steps). Shorter runs stayed at the floor (0.067)
    # too: 150 steps 0.088 (0.066 at step 50, 0.065 at 100); 120 steps of batch 32 at lr 5e-3, 0.059.
    assert result.spearman > result.floors["unigram"] + 0.1, (result.spearman, result.floors)
    assert result.floors["profile"] == pytest.approx(0.658, abs=0.005)  # the measured 0.66


def test_profile_floor_reproduces_the_measured_figure(shared_data, blat):
    from megatron_plm.evaluation.dms import load_assays, spearman

    (assay,) = load_assays(shared_data / "dms", [ASSAY])
    _, profile = blat
    assert profile.query == assay.wild_type and profile.neff == pytest.approx(3378.2, abs=0.1)
    assert spearman(profile.scores(assay.wild_type, assay.mutations), assay.scores) == pytest.approx(0.658, abs=0.002)
    assert profile.scores("MKT" + assay.wild_type[:50], assay.mutations[:3]) is None  # not this protein
