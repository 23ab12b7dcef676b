"""FP8 via Transformer Engine: the config -> megatron-core mapping and the start-up guards (CPU-testable)."""

import pytest

from conftest import REPO
from megatron_plm.training.config import load_config
from megatron_plm.models.config import ModelConfig
from megatron_plm.models.precision import FP8Config, check_fp8_supported
from megatron_plm.runtime.parallel import ParallelConfig


def test_fp8_settings_map_onto_transformer_config():
    fp8 = FP8Config(recipe="tensorwise", format="hybrid", bf16_first_layers=2, bf16_last_layers=1)
    model = ModelConfig(num_layers=8, hidden_size=64, num_attention_heads=4)
    config = model.to_transformer_config(ParallelConfig(), **fp8.transformer_config_kwargs())
    assert (config.fp8, config.fp8_recipe) == ("hybrid", "tensorwise")
    assert config.first_last_layers_bf16 and config.num_layers_at_start_in_bf16 == 2
    assert config.num_layers_at_end_in_bf16 == 1
    plain = FP8Config(recipe="mxfp8", format="e4m3", bf16_first_layers=0, bf16_last_layers=0)
    config = model.to_transformer_config(ParallelConfig(), **plain.transformer_config_kwargs())
    assert (config.fp8, config.fp8_recipe, config.first_last_layers_bf16) == ("e4m3", "mxfp8", False)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["fp8.recipe=delayed"], "'delayed' cannot keep layers in BF16"),
        (["fp8.bf16_first_layers=2", "fp8.bf16_last_layers=2"], "leave no FP8 layer"),
        (["fp8.recipe=fp4"], "fp8.recipe must be one of"),
    ],
)
def test_fp8_config_errors_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(
            REPO / "examples/configs/tiny_clm.yaml", ["training.precision=fp8", "model.num_layers=4", *overrides]
        )


def test_fp8_guards():
    fp8 = FP8Config()
    with pytest.raises(ValueError, match="needs Transformer Engine, which is not installed"):
        check_fp8_supported(fp8, transformer_engine=None, gpu_capability=(9, 0))
    with pytest.raises(ValueError, match="needs a GPU"):
        check_fp8_supported(fp8, transformer_engine="2.8", gpu_capability=None)
    with pytest.raises(ValueError, match=r"needs compute capability 8\.9 or newer; this GPU has 8\.0"):
        check_fp8_supported(fp8, transformer_engine="2.8", gpu_capability=(8, 0))  # A100
    with pytest.raises(ValueError, match=r"'mxfp8' needs compute capability 10\.0.*use 'tensorwise' on Hopper"):
        check_fp8_supported(FP8Config(recipe="mxfp8"), transformer_engine="2.8", gpu_capability=(9, 0))
    check_fp8_supported(fp8, transformer_engine="2.8", gpu_capability=(9, 0))  # H100: fine


def test_fp8_run_stops_at_start_up_on_this_machine(sample_corpus, tmp_path):
    """Never a silent fallback: on a machine without TE (or without a GPU) the run refuses to start."""
    import torch

    from megatron_plm.runtime.distributed import initialize
    from megatron_plm.training.trainer import train

    config = load_config(
        REPO / "examples/configs/tiny_clm.yaml",
        [
            "training.precision=fp8",
            f"data.sources=[{{prefix: {sample_corpus}}}]",
            "checkpoint.save=null",
            "checkpoint.init_from=null",
            "model.num_layers=4",
        ],
    )
    expected = "needs a GPU" if not torch.cuda.is_available() else "Transformer Engine"
    with initialize(config.parallel) as runtime, pytest.raises(ValueError, match=expected):
        train(config, runtime)
