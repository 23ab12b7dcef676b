"""Embeddings (parity with transformers' hidden states of the exported model) and structure probes."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO

from megatron_plm.checkpoint.export import export_hf
from megatron_plm.data.preprocess.fasta import InputFormatError, read_fasta
from megatron_plm.data.tokenizers.protein import ProteinTokenizer
from megatron_plm.evaluation.embed import embed
from megatron_plm.evaluation.model import load_scoring_model
from megatron_plm.evaluation.probe import ProbeConfig, load_chains, run_probe, split_chains

TOK = ProteinTokenizer()
SS = "secondary_structure/porter6_train_sample_2000_dssp8.tsv.gz"


def records(sample_fasta, n=5, longest=120):
    return [
        (r.record_id, TOK.encode(r.sequence[: 40 + 20 * i]).astype(np.int64)[:longest])
        for i, (_, r) in enumerate(zip(range(n), read_fasta(sample_fasta)))
    ]


@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_embeddings_equal_transformers_hidden_states(runtime, trained, sample_fasta, tmp_path, objective):
    from transformers import AutoModel

    ours = load_scoring_model(trained[objective], runtime)
    data = records(sample_fasta)
    got = embed(ours, data, layers=[0, 1, -1], pool="per-token", batch_size=2)  # padded batches
    assert sorted(got.layers) == [0, 1, 2] and got.ids == [i for i, _ in data]
    exported = export_hf(trained[objective], tmp_path / "hf", runtime)
    reference = AutoModel.from_pretrained(exported).eval()
    frame = TOK.frame_mlm if objective == "mlm" else TOK.frame_clm
    for k, (_, residues) in enumerate(data):
        with torch.no_grad():
            hidden = reference(
                input_ids=torch.as_tensor(frame(residues))[None], output_hidden_states=True
            ).hidden_states
        for layer in (0, 1, 2):
            want = hidden[layer][0, 1 : len(residues) + 1].numpy()
            assert np.abs(got.per_sequence(layer)[k] - want).max() < 1e-4, (k, layer)
    # The same through the exported model, and the pooled forms agree with the per-token ones.
    via_hf = embed(load_scoring_model(exported), data, layers=[-1], pool="per-token")
    assert np.abs(via_hf.layers[2] - got.layers[2]).max() < 1e-4
    mean = embed(ours, data, pool="mean")
    assert np.allclose(mean.layers[2], [p.mean(0) for p in got.per_sequence(2)], atol=1e-5)


def test_long_proteins_are_embedded_in_windows(runtime, trained, sample_fasta):
    model = load_scoring_model(trained["mlm"], runtime)
    long = [
        (r.record_id, TOK.encode(r.sequence).astype(np.int64))
        for r in read_fasta(sample_fasta)
        if len(r.sequence) > 2 * model.context
    ][:2]
    got = embed(model, long, pool="per-token")
    assert [len(p) for p in got.per_sequence(2)] == [len(s) for _, s in long]
    first = embed(model, [(i, s[: model.context - 2]) for i, s in long], pool="per-token")
    for whole, head in zip(got.per_sequence(2), first.per_sequence(2)):
        assert np.abs(whole[: model.context - 2] - head).max() < 1e-5


def test_embed_cli_writes_npz_with_ids(trained, sample_fasta, tmp_path):
    fasta = tmp_path / "few.fasta"
    fasta.write_text("".join(f">{i} desc\n{TOK.decode(s)}\n" for i, s in records(sample_fasta, 3)))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "megatron_plm",
            "evaluate",
            "embed",
            "--model",
            str(trained["clm"]),
            "--fasta",
            str(fasta),
            "--output",
            str(tmp_path / "e.npz"),
            "--pool",
            "per-token",
            "--layers",
            "0",
            "-1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    saved = np.load(tmp_path / "e.npz")
    lengths = [len(s) for _, s in records(sample_fasta, 3)]
    assert list(saved["ids"]) == [i for i, _ in records(sample_fasta, 3)]
    assert saved["layer_0"].shape == saved["layer_2"].shape == (sum(lengths), 64)
    assert list(np.diff(saved["offsets"])) == lengths


def test_probe_on_a_handful_of_chains(runtime, trained, shared_data, monkeypatch, capsys):
    config = ProbeConfig(data=str(shared_data / SS), chains=40, max_length=300, test_fraction=0.3)
    chains = load_chains(config.data, config.chains, config.max_length)
    test = split_chains(chains, config.test_fraction)
    assert not {c.sequence for c, t in zip(chains, test) if t} & {c.sequence for c, t in zip(chains, test) if not t}
    monkeypatch.setenv("MEGATRON_PLM_PROGRESS_INTERVAL", "0")  # a line per update (stderr is not a terminal)
    result = run_probe(load_scoring_model(trained["mlm"], runtime), config, show_progress=True)
    progress = capsys.readouterr().err
    assert "windows (100%)" in progress and "probe fits: 4/4 fits" in progress, progress
    assert result.test_chains == int(test.sum()) and result.train_chains + result.test_chains == 40
    labels = "".join(c.ss8 for c, t in zip(chains, test) if t)
    majority3 = max(sum(s in g for s in labels) for g in ("HGI", "EB", "TS~")) / len(labels)
    majority8 = max(labels.count(s) for s in set(labels)) / len(labels)
    # The residue-window baseline carries real signal; the accuracies are accuracies.
    assert result.baseline_q3 > majority3 and result.baseline_q8 > majority8
    assert 0 < result.q8 <= result.q3 + 0.2 and result.q3 <= 1


def test_malformed_structure_file_names_line(tmp_path):
    path = tmp_path / "ss.tsv"
    path.write_text("index\tsequence\tss8\n0\tMKT\tHHE\n1\tMKTA\tHH~\n")
    with pytest.raises(InputFormatError, match="4 residues but ss8 has 3 labels") as caught:
        load_chains(str(path), 10, 1000)
    assert caught.value.line == 3 and caught.value.record == "1"


def test_embed_includes_several_pools_in_one_pass_batches_by_tokens_and_writes_fair_esm_files(
    runtime, trained, sample_fasta, tmp_path
):
    from megatron_plm.evaluation.embed import embed_all

    model = load_scoring_model(trained["mlm"], runtime)
    data = records(sample_fasta, 5)
    calls = []
    hidden_states = model.hidden_states
    model.hidden_states = lambda ids, real: calls.append(ids.shape) or hidden_states(ids, real)
    got = embed_all(model, data, layers=[0, -1], pools=("mean", "per-token", "bos"), toks_per_batch=300)
    # One pass for the three pools, in batches of at most 300 tokens (padded), as fair-esm batches.
    assert sum(b for b, _ in calls) == len(data) and all(b * s <= 300 for b, s in calls) and len(calls) > 1
    per_token = embed(model, data, layers=[0, -1], pool="per-token", batch_size=2)
    for k in (0, 2):
        assert np.abs(got["per-token"].layers[k] - per_token.layers[k]).max() < 1e-5
        assert np.allclose(got["mean"].layers[k], [p.mean(0) for p in per_token.per_sequence(k)], atol=1e-5)
    # bos is position 0 (the <cls> of an MLM), as fair-esm's bos_representations.
    assert np.abs(got["bos"].layers[2] - embed(model, data, layers=[-1], pool="cls").layers[2]).max() < 1e-5

    fasta = tmp_path / "few.fasta"
    fasta.write_text("".join(f">{i} desc\n{TOK.decode(s)}\n" for i, s in data))
    out = subprocess.run(
        [sys.executable, "-m", "megatron_plm", "evaluate", "embed", "--model", str(trained["mlm"]), "--fasta"]
        + [str(fasta), "--output", str(tmp_path / "esm"), "--format", "fair-esm", "--include", "mean", "per_tok"]
        + ["bos", "--layers", "0", "-1", "--toks-per-batch", "400", "--no-progress"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # What fair-esm's extract.py writes and its downstream scripts read: torch.load(f"{label}.pt").
    for k, (label, residues) in enumerate(data):
        saved = torch.load(tmp_path / "esm" / f"{label}.pt")
        assert saved["label"] == label
        assert set(saved) == {"label", "representations", "mean_representations", "bos_representations"}
        assert sorted(saved["representations"]) == [0, 2]
        assert saved["representations"][2].shape == (len(residues), 64)
        assert np.abs(saved["representations"][2].numpy() - per_token.per_sequence(2)[k]).max() < 1e-5
        assert torch.allclose(saved["mean_representations"][2], saved["representations"][2].mean(0), atol=1e-5)
        assert saved["bos_representations"][0].shape == (64,)
