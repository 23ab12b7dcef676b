"""Weight checkpoints: atomic (staged then renamed), refuse to overwrite, restore exactly."""

import pytest
import torch

from megatron_plm.checkpoint.weights import load_model_weights, save_model_weights
from megatron_plm.runtime import ParallelConfig, initialize
from megatron_plm.training.build import OptimizerConfig, build_training_state
from megatron_plm.training.smoke import tiny_model_config


def test_save_then_load_restores_weights_and_leaves_no_staging(tmp_path):
    target = tmp_path / "weights"
    with initialize(ParallelConfig(), seed=5) as runtime:
        state = build_training_state(tiny_model_config(32), OptimizerConfig(), runtime)
        model = state.unwrapped()
        saved = {k: v.detach().clone() for k, v in model[0].state_dict().items() if v is not None}
        save_model_weights(model, target)
        assert [p.name for p in tmp_path.iterdir()] == ["weights"]  # no *.tmp-* left behind
        with pytest.raises(FileExistsError, match="already exists"):
            save_model_weights(model, target)
        with torch.no_grad():
            for p in model[0].parameters():
                p.add_(1.0)
        load_model_weights(model, target)
        for name, value in model[0].state_dict().items():
            if name in saved and isinstance(value, torch.Tensor):
                assert torch.equal(value, saved[name]), name
        with pytest.raises(FileNotFoundError, match="not a megatron-core distributed checkpoint"):
            load_model_weights(model, tmp_path)
