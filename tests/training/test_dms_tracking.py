"""training.eval_dms: zero-shot Spearman scored at validation, logged, and the same as evaluate dms."""

import json
import math

import pytest

from conftest import REPO
from megatron_plm.runtime.distributed import initialize
from megatron_plm.training.config import load_config
from megatron_plm.training.trainer import train

ASSAY = REPO / "data/dms/BLAT_ECOLX_Stiffler_2015.csv"


def test_spearman_is_tracked_at_validation_and_matches_evaluate_dms(sample_corpus, tmp_path):
    from megatron_plm.evaluation.dms import load_assay_file, score_assay, spearman, subsample
    from megatron_plm.evaluation.model import load_scoring_model
    from megatron_plm.training.curves import load_runs

    config = load_config(
        REPO / "examples/configs/tiny_clm.yaml",
        [
            f"data.sources=[{{prefix: {sample_corpus}}}]",
            f"checkpoint.save={tmp_path / 'clm'}",
            "checkpoint.init_from=null",
            "training.train_iters=6",
            "training.eval_interval=3",
            "training.eval_iters=1",
            f"training.eval_dms.assays=[{ASSAY}]",
            f"training.eval_dms.wildtype={REPO / 'data/dms/wildtype.fasta'}",
            "training.eval_dms.max_mutants=40",
        ],
    )
    with initialize(config.parallel, seed=config.training.seed) as runtime:
        result = train(config, runtime)
        assert [v["step"] for v in result.validation] == [3, 6]
        for entry in result.validation:
            scored = entry["dms"]["BLAT_ECOLX_Stiffler_2015"]
            assert scored["mutants"] == 40 and math.isfinite(scored["spearman"]) and scored["seconds"] >= 0
        # The final validation ran on the weights the checkpoint holds: evaluate dms gives the same figure.
        model = load_scoring_model(tmp_path / "clm", runtime)
        assay = subsample(load_assay_file(ASSAY, str(REPO / "data/dms/wildtype.fasta")), 40, 0)
        expected = spearman(score_assay(model, assay), assay.scores)
    assert result.validation[-1]["dms"]["BLAT_ECOLX_Stiffler_2015"]["spearman"] == pytest.approx(expected, abs=1e-6)
    lines = [json.loads(line) for line in (tmp_path / "clm/metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in lines if e["kind"] == "validation" and "dms" in e] == [3, 6]
    (run,) = load_runs([tmp_path / "clm"])
    assert [len(points) for points in run["series"]["dms"].values()] == [2]


def test_eval_dms_config_errors_name_the_field(sample_corpus):
    base = [f"data.sources=[{{prefix: {sample_corpus}}}]", f"training.eval_dms.assays=[{ASSAY}]"]
    cases = {
        "training.eval_dms.interval (5) must be a multiple of training.eval_interval": [
            "training.eval_interval=2",
            "training.eval_dms.interval=5",
        ],
        "training.eval_dms.region: covered needs training.eval_dms.msa": ["training.eval_dms.region=covered"],
        "training.eval_dms.max_mutants must be >= 0": ["training.eval_dms.max_mutants=-1"],
    }
    for message, overrides in cases.items():
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_config(REPO / "examples/configs/tiny_clm.yaml", [*base, *overrides])
    with pytest.raises(ValueError, match="does not exist"):
        load_config(REPO / "examples/configs/tiny_clm.yaml", [base[0], "training.eval_dms.assays=[nowhere.csv]"])
