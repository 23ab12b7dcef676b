"""HF export/import on CPU fp32: logits parity on real sequences, round trips, clear errors."""

import json

import numpy as np
import pytest
import torch

from conftest import ESM2_8M

from megatron_plm.checkpoint.export import export_hf, import_hf
from megatron_plm.checkpoint.saved_run import SavedRun
from megatron_plm.data.samples.batch import Batch
from megatron_plm.data.preprocess.fasta import read_fasta
from megatron_plm.data.tokenizers.protein import ProteinTokenizer
from megatron_plm.models.build import build_model_chunk

TOK = ProteinTokenizer()
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def real_sequences(sample_fasta):
    records = read_fasta(sample_fasta)
    return [r.sequence.decode()[:100] for _, r in zip(range(6), records)]


def batch_of(sequences, objective, *, mask_every=0):
    framed = [(TOK.frame_mlm if objective == "mlm" else TOK.frame_clm)(TOK.encode(s)) for s in sequences]
    width = max(len(f) for f in framed)
    ids = np.full((len(framed), width), TOK.pad, dtype=np.int64)
    real = np.zeros_like(ids)
    for row, f in enumerate(framed):
        ids[row, : len(f)] = f
        real[row, : len(f)] = 1
        if mask_every:
            ids[row, 1 : len(f) - 1 : mask_every] = TOK.mask
    return torch.from_numpy(ids), torch.from_numpy(real)


def our_logits(chunk, ids, real, objective):
    segments = torch.where(real.bool(), 0, -1).int()
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    batch = Batch(
        tokens=ids,
        labels=ids,
        loss_mask=real.float(),
        position_ids=positions,
        causal=objective == "clm",
        segment_ids=segments,
    )
    chunk.eval()
    device = next(chunk.parameters()).device  # the runtime's: a GPU, or the device-strict shim's virtual one
    with torch.no_grad():
        return chunk(ids.to(device), positions.to(device), batch.attention_mask().to(device)).cpu()


def hf_logits(directory, ids, real, objective):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    auto = AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM
    model = auto.from_pretrained(directory).eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=real).logits


def load_ours(checkpoint, runtime):
    run = SavedRun.open(checkpoint)
    chunk = build_model_chunk(run.model, runtime, objective=run.objective)
    run.load_weights(chunk)
    return chunk, run.objective


@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_export_matches_our_logits(runtime, trained, real_sequences, tmp_path, objective):
    from transformers import AutoTokenizer

    out = export_hf(trained[objective], tmp_path / "hf", runtime)
    assert json.loads((out / "config.json").read_text())["architectures"] == [
        "EsmForMaskedLM" if objective == "mlm" else "GPTNeoXForCausalLM"
    ]
    chunk, _ = load_ours(trained[objective], runtime)
    ids, real = batch_of(real_sequences, objective)
    theirs = hf_logits(out, ids, real, objective)
    ours = our_logits(chunk, ids, real, objective)[..., : theirs.shape[-1]]
    difference = (ours - theirs)[real.bool()].abs().max().item()
    assert difference <= TOLERANCE, difference
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = real_sequences[0] + ("2" if objective == "clm" else "")  # a CLM's closing terminus is written
    assert tokenizer(text)["input_ids"] == ids[0][real[0].bool()].tolist()


def test_import_esm2_8m_matches_transformers(runtime, real_sequences, tmp_path):
    from transformers import EsmConfig, EsmForMaskedLM

    torch.manual_seed(0)
    reference = EsmForMaskedLM(EsmConfig(**ESM2_8M)).eval()
    reference.save_pretrained(tmp_path / "esm2_8m")
    imported = import_hf(tmp_path / "esm2_8m", tmp_path / "ours", runtime)
    chunk, objective = load_ours(imported, runtime)
    assert objective == "mlm"
    for mask_every in (0, 7):  # token dropout rescales differently with and without <mask>
        ids, real = batch_of(real_sequences, "mlm", mask_every=mask_every)
        with torch.no_grad():
            theirs = reference(input_ids=ids, attention_mask=real).logits
        ours = our_logits(chunk, ids, real, "mlm")[..., :33]
        difference = (ours - theirs)[real.bool()].abs().max().item()
        assert difference <= TOLERANCE, (mask_every, difference)


def test_export_import_export_is_byte_identical(runtime, trained, tmp_path):
    from safetensors.torch import load_file

    for objective in ("mlm", "clm"):
        first = export_hf(trained[objective], tmp_path / f"{objective}_1", runtime)
        back = import_hf(first, tmp_path / f"{objective}_ours", runtime)
        second = export_hf(back, tmp_path / f"{objective}_2", runtime)
        a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
        assert sorted(a) == sorted(b)
        for key in a:
            assert a[key].dtype == b[key].dtype and a[key].numpy().tobytes() == b[key].numpy().tobytes(), key


def test_bf16_export(runtime, trained, tmp_path):
    from safetensors.torch import load_file

    out = export_hf(trained["mlm"], tmp_path / "bf16", runtime, dtype="bf16")
    tensors = load_file(out / "model.safetensors")
    assert {t.dtype for k, t in tensors.items() if not k.endswith("inv_freq")} == {torch.bfloat16}
    assert {t.dtype for k, t in tensors.items() if k.endswith("inv_freq")} <= {
        torch.float32
    }  # rotary: fp32, as transformers computes it


def test_bad_checkpoints_give_clear_errors_and_no_output(runtime, trained, tmp_path):
    import shutil

    from megatron_plm.checkpoint.distributed import latest_checkpoint

    source = latest_checkpoint(trained["clm"])
    truncated = tmp_path / "truncated"
    shutil.copytree(source, truncated)
    shard = sorted(truncated.glob("*.distcp"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    with pytest.raises(ValueError, match=r"truncated/__0_0\.distcp is corrupt: [0-9,]+ bytes, [0-9,]+ when saved"):
        export_hf(truncated, tmp_path / "out1", runtime)
    (truncated / "manifest.json").unlink()  # a checkpoint without checksums: megatron-core's error, named
    with pytest.raises(ValueError, match=r"truncated: cannot load its model tensors"):
        export_hf(truncated, tmp_path / "out1", runtime)

    mismatched = tmp_path / "mismatched"
    shutil.copytree(source, mismatched)
    state = json.loads((mismatched / "train_state.json").read_text())
    state["config"]["model"]["num_layers"] = 3
    (mismatched / "train_state.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"mismatched"):
        export_hf(mismatched, tmp_path / "out2", runtime)

    with pytest.raises(ValueError, match=r"is not a megatron_plm checkpoint"):
        export_hf(tmp_path, tmp_path / "out3", runtime)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("out")]

    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        export_hf(trained["clm"], tmp_path / "taken", runtime)


def test_import_refuses_what_it_cannot_express(runtime, tmp_path):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    GPTNeoXForCausalLM(
        GPTNeoXConfig(
            vocab_size=35,
            hidden_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=256,
            use_parallel_residual=True,
        )
    ).save_pretrained(tmp_path / "neox")
    with pytest.raises(
        ValueError, match=r"use_parallel_residual must be false; megatron_plm's model cannot express it"
    ):
        import_hf(tmp_path / "neox", tmp_path / "ours", runtime)
    assert not (tmp_path / "ours").exists()


@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_checkpoints_of_te_runs_convert_and_score_without_te(runtime, trained, real_sequences, tmp_path, objective):
    """A run trained with Transformer Engine (model.attention_backend te, the container's path) is exported
    and scored on a machine without TE through the reference layers. megatron-core's local spec saves
    under TE's tensor names, so a local checkpoint relabelled te stands in for one here."""
    import shutil

    from safetensors.torch import load_file

    from megatron_plm.checkpoint.manifest import write_manifest
    from megatron_plm.evaluation.model import load_scoring_model

    relabelled = shutil.copytree(trained[objective], tmp_path / "te_run")
    for state in relabelled.rglob("train_state.json"):
        saved = json.loads(state.read_text())
        saved["config"]["model"]["attention_backend"] = "te"
        state.write_text(json.dumps(saved))
        write_manifest(state.parent)  # the checksums a TE run would have saved
    assert SavedRun.open(relabelled).model.attention_backend == "te"
    original = load_file(export_hf(trained[objective], tmp_path / "hf", runtime) / "model.safetensors")
    converted = load_file(export_hf(relabelled, tmp_path / "hf_te", runtime) / "model.safetensors")
    assert original.keys() == converted.keys() and all(torch.equal(original[k], converted[k]) for k in original)
    ids, real = batch_of(real_sequences, objective)
    scored = [load_scoring_model(path, runtime).log_probs(ids, real) for path in (trained[objective], relabelled)]
    assert torch.equal(scored[0], scored[1])


def test_exports_load_with_no_missing_or_unexpected_keys(runtime, trained, tmp_path):
    """transformers reports nothing on loading an export: rotary buffers and ESM's (zero) contact head are
    written for whichever layout the installed version expects."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    for objective, auto in (("mlm", AutoModelForMaskedLM), ("clm", AutoModelForCausalLM)):
        out = export_hf(trained[objective], tmp_path / objective, runtime)
        model, info = auto.from_pretrained(out, output_loading_info=True)
        assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), (
            transformers.__version__,
            info,
        )
        if objective == "clm":  # the output projection under the name transformers 4.x and 5.x both load
            from safetensors import safe_open

            with safe_open(out / "model.safetensors", "pt") as written:
                assert "embed_out.weight" in written.keys() and "lm_head.weight" not in written.keys()
        fresh = type(model)(model.config)  # the buffers transformers computes itself
        for name, buffer in fresh.named_buffers():
            if name.endswith("inv_freq"):
                assert torch.equal(dict(model.named_buffers())[name], buffer), name


def test_import_of_a_default_constructed_esm_config(runtime, sample_fasta, tmp_path):
    """EsmConfig's defaults leave hidden_act unset (transformers 5.x writes none): ESM always uses GELU."""
    from transformers import EsmConfig, EsmForMaskedLM

    config = EsmConfig(
        vocab_size=33,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        position_embedding_type="rotary",
        mask_token_id=32,
        pad_token_id=1,
        token_dropout=True,
    )
    torch.manual_seed(0)
    reference = EsmForMaskedLM(config).eval()
    reference.save_pretrained(tmp_path / "esm")
    saved = json.loads((tmp_path / "esm/config.json").read_text())
    if hasattr(EsmConfig(), "hidden_act"):
        saved.pop("hidden_act")  # transformers 4.x spells the default out; drop it to test the same case
        (tmp_path / "esm/config.json").write_text(json.dumps(saved))
    assert "hidden_act" not in saved
    chunk, objective = load_ours(import_hf(tmp_path / "esm", tmp_path / "ours", runtime), runtime)
    sequences = [r.sequence.decode()[:80] for _, r in zip(range(4), read_fasta(sample_fasta))]
    ids, real = batch_of(sequences, "mlm", mask_every=5)
    with torch.no_grad():
        theirs = reference(input_ids=ids, attention_mask=real).logits
    difference = (our_logits(chunk, ids, real, "mlm")[..., :33] - theirs)[real.bool()].abs().max().item()
    assert difference <= TOLERANCE
    EsmConfig().save_pretrained(tmp_path / "plain")  # every default: absolute positions, no vocabulary
    with pytest.raises(ValueError, match=r"position_embedding_type must be 'rotary' \(got 'absolute'"):
        import_hf(tmp_path / "plain", tmp_path / "ours_plain", runtime)


def test_export_files_follow_the_umask(runtime, trained, tmp_path):
    """Every exported file, model.safetensors included (safetensors writes 0600), is 0644 under umask 022."""
    import os

    previous = os.umask(0o022)
    try:
        out = export_hf(trained["clm"], tmp_path / "clm", runtime)
    finally:
        os.umask(previous)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {oct(0o644)}, modes
