"""Sizing: recipe parameter counts on the meta device, the memory estimate against a measured run, the plan table."""

import subprocess
import sys

import pytest
import torch

from conftest import REPO
from megatron_plm.training.config import load_config
from megatron_plm.training.planner import count_parameters, make_plan

RECIPES = REPO / "examples/configs/recipes"


@pytest.mark.parametrize("recipe, target", [("clm_7b", 7.2e9), ("mlm_10b", 10.7e9), ("clm_1b", 1.2089e9)])
def test_flagship_recipes_have_the_papers_sizes_on_the_meta_device(recipe, target):
    from megatron_plm.runtime.distributed import initialize
    from megatron_plm.runtime.parallel import ParallelConfig
    from megatron_plm.models.build import build_model_chunk

    config = load_config(RECIPES / f"{recipe}.yaml").resolve()
    with initialize(ParallelConfig()) as runtime, torch.device("meta"):
        chunk = build_model_chunk(config.model, runtime, objective=config.objective)
    built = sum(p.numel() for p in chunk.parameters())
    assert built == count_parameters(config).total
    assert abs(built - target) / target < 0.01, built


@pytest.mark.parametrize("size", ["8m", "35m", "150m", "650m", "3b"])
def test_esm2_size_configs_count_like_the_built_model(size):
    from megatron_plm.runtime.distributed import initialize
    from megatron_plm.runtime.parallel import ParallelConfig
    from megatron_plm.models.build import build_model_chunk

    config = load_config(RECIPES / f"esm2_{size}.yaml").resolve()
    with initialize(ParallelConfig()) as runtime, torch.device("meta"):
        chunk = build_model_chunk(config.model, runtime, objective="mlm")
    assert sum(p.numel() for p in chunk.parameters()) == count_parameters(config).total


def test_plan_table_for_both_recipes_on_h100_nodes():
    for recipe, gpus in (("clm_7b", 8), ("clm_7b", 64), ("mlm_10b", 64)):
        out = subprocess.run(
            [sys.executable, "-m", "megatron_plm", "plan", str(RECIPES / f"{recipe}.yaml"), "--gpus", str(gpus)],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        chosen = [line for line in out.stdout.splitlines() if line.startswith("*")]
        assert len(chosen) == 1 and chosen[0].rstrip().endswith("yes"), out.stdout
        assert "NO" in out.stdout or recipe == "mlm_10b"  # the 7B without dist-opt or recompute does not fit
        assert "days on" in out.stdout
    with pytest.raises(ValueError, match="not divisible by TP x PP"):
        make_plan(load_config(RECIPES / "mlm_10b.yaml"), gpus=6)


def _plan(*args):
    return subprocess.run(
        [sys.executable, "-m", "megatron_plm", "plan", *map(str, args)], cwd=REPO, capture_output=True, text=True
    )


def _chosen_row(stdout: str) -> str:
    (row,) = [line for line in stdout.splitlines() if line.startswith("*")]
    return row.rstrip()


def test_budget_write_config_writes_a_layout_its_own_plan_says_fits(tmp_path):
    written = tmp_path / "mlm_budget.yaml"
    out = _plan("--budget-flops", 1.72e22, "--objective", "mlm", "--write-config", written, "--gpus", 16)
    assert out.returncode == 0, out.stderr
    assert "warning: cannot check how many epochs the budget is: no corpus at corpora/uniref90" in out.stderr
    assert _chosen_row(out.stdout).endswith("yes") and f"wrote {written}" in out.stdout
    replanned = _plan(written, "--gpus", 16)
    assert replanned.returncode == 0, replanned.stderr
    assert _chosen_row(replanned.stdout).endswith("yes"), replanned.stdout
    assert "layout fitted by the planner to 16 x H100 80GB SXM: parallel.activation_recompute selective -> full" in (
        written.read_text()
    )
    # 35 heads (hidden 4480) allow no tensor parallelism and 45 layers no pipeline on 8 GPUs: nothing fits,
    # the command says why and how many GPUs would do, and writes nothing.
    refused = _plan("--budget-flops", 1.72e22, "--objective", "mlm", "--write-config", tmp_path / "no.yaml")
    assert refused.returncode != 0 and not (tmp_path / "no.yaml").exists()
    assert "fits no layout of 8 x H100 80GB SXM (35 heads allow TP [1]" in refused.stderr
    assert "it fits from --gpus 16" in refused.stderr


def test_plan_config_write_config_searches_the_layout_until_it_fits(tmp_path):
    from megatron_plm.config import parse_yaml
    from megatron_plm.training.planner import fit_layout, fits

    unsharded = [
        "parallel.tensor_model_parallel_size=1",
        "parallel.sequence_parallel=false",
        "parallel.use_distributed_optimizer=false",
        "parallel.activation_recompute=none",
    ]
    config = load_config(RECIPES / "clm_7b.yaml", unsharded)
    assert not fits(make_plan(config, gpus=8))
    written = tmp_path / "clm_7b_fitted.yaml"
    out = _plan(RECIPES / "clm_7b.yaml", *unsharded, "--write-config", written)
    assert out.returncode == 0, out.stderr
    fitted = load_config(written)
    assert fits(make_plan(fitted, gpus=8)) and _chosen_row(_plan(written).stdout).endswith("yes")
    expected = fit_layout(config, gpus=8).config
    assert fitted.parallel == expected.parallel and expected.parallel.use_distributed_optimizer
    assert expected.parallel.sequence_parallel == (expected.parallel.tensor_model_parallel_size > 1)
    assert fitted.training.micro_batch_size == expected.training.micro_batch_size
    # Everything but the layout is the source's, as written there.
    source, data = parse_yaml((RECIPES / "clm_7b.yaml").read_text()), parse_yaml(written.read_text())
    for section in (source, data):
        del section["parallel"], section["training"]["micro_batch_size"]
    assert data == source
    # A config that fits is written as it is.
    assert fit_layout(load_config(RECIPES / "clm_7b.yaml"), gpus=8).changes == {}


MEASURE = r"""
import resource, sys, psutil
from megatron_plm.training.config import load_config
from megatron_plm.data.samples.builder import DataBuilder
from megatron_plm.data.samples.loader import BatchLoader
from megatron_plm.data.samples.splits import Split
from megatron_plm.training.planner import make_plan
from megatron_plm.runtime.distributed import initialize
from megatron_plm.training.build import build_run
from megatron_plm.training.step import train_step
if __name__ == "__main__":
    config = load_config(sys.argv[1], sys.argv[2:] + ["training.train_iters=3"])
    with initialize(config.parallel) as runtime:
        data = DataBuilder(config.data, config.objective).build(Split.TRAIN, 64)
        loader = BatchLoader(data, 8, 8, 0, 1, causal=True)
        batches = [loader.next_step() for _ in range(3)]
        base = psutil.Process().memory_info().rss
        state = build_run(config, runtime)
        for microbatches in batches:
            train_step(state, [b.to(runtime.device) for b in microbatches], runtime)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        estimate = make_plan(config, gpus=1, accelerator="cpu").memory.total(recompute="none", distributed_optimizer=False)
        print(estimate / (peak - base))
"""


@pytest.mark.slow
def test_memory_estimate_is_within_20_percent_of_a_measured_cpu_run(sample_corpus):
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            MEASURE,
            str(REPO / "examples/configs/tiny_clm.yaml"),
            f"data.sources=[{{prefix: {sample_corpus}}}]",
            "model.num_layers=8",
            "model.hidden_size=768",
            "model.num_attention_heads=12",
            "data.seq_length=256",
            "training.micro_batch_size=8",
            "training.global_batch_size=8",
            "checkpoint.save=null",
            "checkpoint.init_from=null",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ratio = float(out.stdout.strip().splitlines()[-1])
    assert 0.8 <= ratio <= 1.2, ratio


def test_h200_is_planned_and_named_with_its_datasheet_peaks():
    """The lent H200: an H100's dense bf16 peak (MFU's denominator), 4.8 TB/s, 141 GB, each sourced, and
    the plan of the 1B CLM recipe on one of them says which figures it used."""
    from megatron_plm.training.planner import ACCELERATORS, accelerator_of, format_plan, peak_flops

    h200 = accelerator_of("NVIDIA H200")
    assert h200 is ACCELERATORS["h200-141gb"] and peak_flops("NVIDIA H200") == 989e12 == peak_flops(
        "NVIDIA H100 80GB HBM3"
    )
    assert h200.memory_tbs == 4.8 and "H200 Tensor Core GPU datasheet" in h200.source
    assert all(a.source for a in ACCELERATORS.values()) and accelerator_of("Tesla T4") is None
    plan = make_plan(load_config(RECIPES / "clm_1b.yaml"), gpus=1, accelerator="h200-141gb")
    text = format_plan(plan)
    assert "1 x H200 141GB SXM" in text and "of 140.4 GiB" in text and "989 TFLOP/s dense bf16, 4.8 TB/s" in text
