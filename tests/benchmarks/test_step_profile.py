"""benchmarks/step_profile.py records the real op stream: its matrix-product FLOPs equal 6 x tokens x
the model's matrix weights, and RoPE lands in its own row."""

import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import step_profile  # noqa: E402


def test_profile_counts_every_matrix_product_once(sample_corpus):
    records, info = step_profile.profile(
        str(REPO / "examples/configs/tiny_clm.yaml"),
        [f"data.sources=[{{prefix: {sample_corpus}}}]", "training.precision=fp32", "checkpoint.init_from=null"],
        layers=None,
        roofline=step_profile.ROOFLINES["h100"],
        attention_efficiency=0.45,
    )
    from megatron_plm.training.config import load_config

    model = load_config(REPO / "examples/configs/tiny_clm.yaml").resolve().model
    h, f, layers = model.hidden_size, model.ffn_hidden_size or 4 * model.hidden_size, model.num_layers
    weights = layers * (4 * h * h + 2 * h * f) + model.padded_vocab_size() * h  # qkv, proj, fc1, fc2; output layer
    gemm = sum(r.flops for r in records if step_profile.category(r) == "GEMM")
    assert gemm == 6 * info["tokens"] * weights
    kinds = {step_profile.category(r) for r in records}
    assert {"rotary + q/k/v split", "LayerNorm", "bias + GELU", "core attention"} <= kinds
    assert all(r.seconds > 0 for r in records)
    # The whole optimizer step is its own phase, Adam's update (step_with_ready_grads) included (issue 27).
    update = [r for r in records if "addcdiv" in r.op or "lerp" in r.op]
    assert update and all(step_profile.category(r) == "optimizer + grad norm + param copy" for r in update)


def test_fused_kernels_replace_their_references_on_cpu(sample_corpus):
    """With the varlen backend the CPU runs the references of csrc/rotary and csrc/bias_gelu; the profile
    prices each kernel instead (one read and one write per pass) and drops the reference's ops."""
    records, info = step_profile.profile(
        str(REPO / "examples/configs/tiny_clm.yaml"),
        [
            f"data.sources=[{{prefix: {sample_corpus}}}]",
            "training.precision=fp32",
            "checkpoint.init_from=null",
            "model.attention_backend=varlen",
            "data.packed=true",
        ],
        layers=None,
        roofline=step_profile.ROOFLINES["h100"],
        attention_efficiency=0.45,
    )
    from megatron_plm.training.config import load_config

    model = load_config(REPO / "examples/configs/tiny_clm.yaml").resolve().model
    ffn = model.ffn_hidden_size or 4 * model.hidden_size
    priced = [r for r in records if ".mlp.bias_gelu" in r.module]
    assert [r.op for r in priced] == ["fused bias+GELU (priced)"]
    assert priced[0].bytes == 5 * info["tokens"] * ffn * 2 * model.num_layers
    assert step_profile.category(priced[0]) == "bias + GELU"
    assert any(r.op == "fused rotary (priced)" for r in records)
