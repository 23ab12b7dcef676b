"""megatron-core's MLP with its bias add + exact GELU fused (``csrc/bias_gelu``).

megatron-core fuses bias and activation only for the tanh approximation of GELU; ESM-2 (and our
CLM recipes, and the HF classes they export to) use the exact erf GELU, so without Transformer
Engine the MLP runs them as separate PyTorch ops. ``BiasGeluMLP`` is megatron-core's ``MLP`` (same
submodules, parameters and checkpoint keys) whose activation is :func:`bias_gelu`: the fused kernel
on a GPU, on the CPU the very ops megatron-core's MLP runs.
"""

from __future__ import annotations

import torch.nn.functional as F
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.module import MegatronModule

from megatron_plm.kernels.bias_gelu import bias_gelu


class BiasGelu(MegatronModule):
    """``GELU(x + bias)``; a module of its own so profiles name its time (no parameters, no state)."""

    def forward(self, x, bias):
        return bias_gelu(x, bias)


class BiasGeluMLP(MLP):
    """fc1 -> fused bias + exact GELU -> fc2 (fc2's bias is left to the layer's bias-dropout-add)."""

    def __init__(self, config, submodules: MLPSubmodules | None = None, ffn_hidden_size: int | None = None, **kwargs):
        # Built from the layer spec as a class (not a ModuleSpec, which megatron-core's TransformerLayer
        # only knows for its own MLP classes): the local spec's linear layers by default.
        submodules = submodules or MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear)
        super().__init__(config, submodules, ffn_hidden_size=ffn_hidden_size or config.ffn_hidden_size, **kwargs)
        if config.gated_linear_unit or not config.add_bias_linear or config.activation_func is not F.gelu:
            raise ValueError("BiasGeluMLP needs a plain (ungated) MLP with biases and the exact GELU")
        self.bias_gelu = BiasGelu(config)

    def forward(self, hidden_states, per_token_scale=None, **kwargs):
        if per_token_scale is not None:
            raise ValueError("BiasGeluMLP is a dense MLP; per-token scales belong to MoE experts")
        intermediate, bias = self.linear_fc1(hidden_states)
        return self.linear_fc2(self.bias_gelu(intermediate, bias))
