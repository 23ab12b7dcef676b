"""Evaluation: scorer correctness against transformers, perplexity, windows, generation, bad assays."""

import csv
import math
import shutil

import numpy as np
import pytest
import torch

from conftest import ESM2_8M

from megatron_plm.checkpoint.export import export_hf, import_hf
from megatron_plm.data.preprocess.fasta import InputFormatError, read_fasta
from megatron_plm.data.tokenizers.protein import ProteinTokenizer
from megatron_plm.evaluation.dms import load_assays, masked_marginals
from megatron_plm.evaluation.generate import generate, generation_perplexities
from megatron_plm.models.generation import SamplingConfig
from megatron_plm.evaluation.model import load_scoring_model, pad_batch
from megatron_plm.evaluation.perplexity import clm_windows, perplexity

TOK = ProteinTokenizer()


def direct_masked_marginals(model, wild_type: str, mutants: list[str]) -> np.ndarray:
    """Independent of megatron_plm: transformers' own tokenizer-free computation, one position at a time."""
    vocab = {t: i for i, t in enumerate(ESM2_8M_VOCAB)}
    base = torch.tensor([[0] + [vocab[c] for c in wild_type] + [2]])
    cache = {}
    scores = []
    for mutant in mutants:
        wt, position, mt = mutant[0], int(mutant[1:-1]), mutant[-1]
        if position not in cache:
            masked = base.clone()
            masked[0, position] = 32
            with torch.no_grad():
                cache[position] = torch.log_softmax(model(input_ids=masked).logits[0, position], -1)
        scores.append(float(cache[position][vocab[mt]] - cache[position][vocab[wt]]))
    return np.array(scores)


ESM2_8M_VOCAB = "<cls> <pad> <eos> <unk> L A G V S E R T I D P K Q N F Y M H W C X B U Z O . - <null_1> <mask>".split()


def test_masked_marginals_equal_transformers_and_our_imported_checkpoint(runtime, shared_data, tmp_path):
    from transformers import EsmConfig, EsmForMaskedLM

    torch.manual_seed(1)
    reference = EsmForMaskedLM(EsmConfig(**ESM2_8M)).eval()
    reference.save_pretrained(tmp_path / "esm2_8m")
    (assay,) = load_assays(shared_data / "dms", ["IF1_ECOLI_Kelsic_2016"])
    expected = direct_masked_marginals(reference, assay.wild_type, assay.mutants)
    via_transformers = masked_marginals(load_scoring_model(tmp_path / "esm2_8m"), assay)
    imported = import_hf(tmp_path / "esm2_8m", tmp_path / "ours", runtime)
    via_ours = masked_marginals(load_scoring_model(imported, runtime), assay)
    assert len(expected) == 1367
    assert np.abs(via_transformers - expected).max() <= 1e-4
    assert np.abs(via_ours - expected).max() <= 1e-4
    assert np.std(expected) > 0  # random weights still spread the scores: the comparison is not vacuous


def test_clm_perplexity_equals_transformers_loss(runtime, trained, sample_fasta, tmp_path):
    from transformers import AutoModelForCausalLM

    exported = export_hf(trained["clm"], tmp_path / "hf", runtime)
    reference = AutoModelForCausalLM.from_pretrained(exported).eval()
    records = [
        (r.record_id, TOK.encode(r.sequence).astype(np.int64)[:100]) for _, r in zip(range(5), read_fasta(sample_fasta))
    ]
    ours = perplexity(load_scoring_model(trained["clm"], runtime), records)
    for (_, residues), score in zip(records, ours):
        ids = torch.as_tensor(TOK.frame_clm(residues))[None]
        with torch.no_grad():
            loss = reference(input_ids=ids, labels=ids).loss
        assert score.tokens == len(residues) + 1
        assert score.perplexity == pytest.approx(math.exp(float(loss)), rel=1e-5)


@pytest.mark.parametrize("objective,pseudo", [("clm", False), ("mlm", False), ("mlm", True)])
def test_perplexity_per_residue_equals_per_token_for_the_residue_tokenizer(
    runtime, trained, sample_fasta, objective, pseudo
):
    from megatron_plm.evaluation.perplexity import corpus_perplexity

    records = [
        (r.record_id, TOK.encode(r.sequence).astype(np.int64)[:40]) for _, r in zip(range(3), read_fasta(sample_fasta))
    ]
    scores = perplexity(load_scoring_model(trained[objective], runtime), records, pseudo=pseudo)
    for score in scores:
        assert score.residues == score.tokens > 0 and score.perplexity_per_residue == score.perplexity
    assert corpus_perplexity(scores, per_residue=True) == corpus_perplexity(scores)


def test_clm_windows_score_every_token_once_with_context():
    for length, context in ((300, 128), (129, 128), (1000, 64), (50, 128)):
        windows = clm_windows(np.arange(length), context)
        scored = np.concatenate([np.arange(first, stop) for _, stop, first in windows])
        assert np.array_equal(scored, np.arange(1, length))
        for start, stop, first in windows:
            assert stop - start <= context and first - start >= min(first, context // 2)


def test_mlm_perplexity_is_deterministic_and_pseudo_covers_every_residue(runtime, trained, sample_fasta):
    records = [
        (r.record_id, TOK.encode(r.sequence).astype(np.int64)[:60]) for _, r in zip(range(3), read_fasta(sample_fasta))
    ]
    model = load_scoring_model(trained["mlm"], runtime)
    first, second = perplexity(model, records, seed=3), perplexity(model, records, seed=3)
    assert [s.nll for s in first] == [s.nll for s in second]
    pseudo = perplexity(model, records, pseudo=True)
    assert [s.tokens for s in pseudo] == [len(r) for _, r in records]


def test_generation_is_seeded_framed_and_scored(runtime, trained):
    model = load_scoring_model(trained["clm"], runtime)
    config = SamplingConfig(num_sequences=4, max_length=40, top_k=10, top_p=0.9, seed=7)
    sequences = generate(model, config)
    assert sequences == generate(model, config)
    assert all(1 <= len(s) <= 40 and set(s) <= set("LAGVSERTIDPKQNFYMHWC") for s in sequences)
    reversed_ = generate(model, SamplingConfig(num_sequences=2, max_length=20, reverse=True, seed=1))
    assert all(1 <= len(s) <= 20 for s in reversed_)
    reported = generation_perplexities(model, sequences)
    records = [(str(i), TOK.encode(s).astype(np.int64)) for i, s in enumerate(sequences)]
    assert reported == [s.perplexity for s in perplexity(model, records)]
    with pytest.raises(ValueError, match="masked LM"):
        generate(load_scoring_model(trained["mlm"], runtime), config)


def test_generation_with_kv_cache_equals_uncached_and_honours_prompts_and_context(runtime, trained):
    model = load_scoring_model(trained["clm"], runtime)
    assert model.causal_lm is not None
    config = SamplingConfig(num_sequences=3, max_length=30, seed=2)
    cached = generate(model, config)
    assert cached == generate(model, SamplingConfig(num_sequences=3, max_length=30, seed=2, use_cache=False))
    forward = generate(model, config, "MKTAYIAK")
    assert all(s.startswith("MKTAYIAK") and 9 <= len(s) <= 30 for s in forward)
    backward = generate(model, SamplingConfig(num_sequences=3, max_length=30, seed=2, reverse=True), "MKTAYIAK")
    assert all(s.endswith("MKTAYIAK") and 9 <= len(s) <= 30 for s in backward)
    with pytest.raises(ValueError, match=r"max_length 200 does not fit .*context of 128 tokens.*at most 127 residues"):
        generate(model, SamplingConfig(max_length=200))
    with pytest.raises(ValueError, match=r"the prompt has 30 residues; max_length \(30\)"):
        generate(model, config, "A" * 30)


def test_generate_cli_reads_a_fasta_of_prompts(trained, tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "megatron_plm", "evaluate", "generate", "--model", str(trained["clm"]), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
        )

    (tmp_path / "prompts.fasta").write_text(">p1\nMKT\n>p2\nGSS\n")
    out = tmp_path / "new_dir" / "gen.fasta"
    done = cli("--num", "2", "--max-length", "20", "--prompt", str(tmp_path / "prompts.fasta"), "--output", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    records = [(r.record_id, r.sequence.decode()) for r in read_fasta(out)]
    assert [name for name, _ in records] == ["p1_1", "p1_2", "p2_1", "p2_2"]
    assert all(seq.startswith({"p1": "MKT", "p2": "GSS"}[name[:2]]) for name, seq in records)
    refused = cli("--prompt", "MKJ", "--output", str(out))
    assert refused.returncode == 2 and "--prompt: ['J'] are not amino-acid letters" in refused.stderr
    too_long = cli("--max-length", "200", "--output", str(tmp_path / "long.fasta"))
    assert (
        too_long.returncode == 2
        and "at most 127 residues" in too_long.stderr
        and not (tmp_path / "long.fasta").exists()
    )


@pytest.mark.parametrize(
    "row, message",
    [
        ("A1C,0.1,1", "the wild type has .M. at 1, not .A."),
        ("M999C,0.1,1", "position 999 is outside"),
        ("M1J,0.1,1", "'J' is not a standard amino acid"),
        ("M1,0.1,1", "malformed mutant"),
        ("M1C,high,1", "is not a number"),
        ("M1C,nan,0", "DMS_score 'nan' is not a finite number"),
        ("M1G,0.2,0", "mutant 'M1G' repeats row 3"),
    ],
)
def test_malformed_assay_rows_name_file_and_row(shared_data, tmp_path, row, message):
    shutil.copy(shared_data / "dms/wildtype.fasta", tmp_path / "wildtype.fasta")
    target = tmp_path / "IF1_ECOLI_Kelsic_2016.csv"
    source = (shared_data / "dms/IF1_ECOLI_Kelsic_2016.csv").read_text().splitlines()
    target.write_text("\n".join(source[:4] + [row] + source[4:10]) + "\n")
    with pytest.raises(InputFormatError, match=message) as caught:
        load_assays(tmp_path, ["IF1_ECOLI_Kelsic_2016"])
    assert caught.value.path == str(target) and caught.value.line == 5


def test_dms_cli_writes_one_row_per_mutant(trained, shared_data, tmp_path):
    """Run from another folder than the checkout (its defaults, e.g. --unigram-fasta, are found from the
    package), under umask 022: the CSV is 0644 like any file the user writes."""
    import os
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "megatron_plm",
            "evaluate",
            "dms",
            "--model",
            str(trained["mlm"]),
            "--assays",
            str(shared_data / "dms"),
            "--assay",
            "IF1_ECOLI_Kelsic_2016",
            "--output",
            "scores.csv",
            "--no-leakage",  # (the leakage report has its own tests: test_leakage.py)
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.umask(0o022),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert oct((tmp_path / "scores.csv").stat().st_mode & 0o777) == oct(0o644)
    rows = list(csv.DictReader(open(tmp_path / "scores.csv")))
    assert len(rows) == 1367 and rows[0].keys() == {"DMS_id", "mutant", "score"}
    assert "IF1_ECOLI_Kelsic_2016" in out.stdout and "0.193" in out.stdout  # ProteinGym ESM2-8M beside ours


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_checkpoints_trained_for_packed_attention_score_alike(runtime, trained, sample_fasta, tmp_path, objective):
    """A checkpoint whose run used a packed (thd) backend is scored through packed batches, padding
    rows split off as their own segments; the logits of real tokens equal the mask path's."""
    import json

    from megatron_plm.checkpoint.manifest import write_manifest
    from megatron_plm.checkpoint.distributed import STATE_FILE, latest_checkpoint

    copy = tmp_path / objective
    shutil.copytree(latest_checkpoint(trained[objective]), copy)
    state = json.loads((copy / STATE_FILE).read_text())
    state["config"]["model"]["attention_backend"] = "varlen"
    (copy / STATE_FILE).write_text(json.dumps(state))
    write_manifest(copy)  # the checksums a varlen run would have saved
    masked, packed = load_scoring_model(trained[objective], runtime), load_scoring_model(copy, runtime)
    rows = [TOK.encode(r.sequence[: 30 + 10 * i]) for i, (_, r) in enumerate(zip(range(4), read_fasta(sample_fasta)))]
    ids, real = pad_batch(rows, TOK.pad)
    assert (real == 0).any(), "rows of different lengths: padding must be present"
    want, got = masked.log_probs(ids, real), packed.log_probs(ids, real)
    assert (want - got)[real.bool()].abs().max() < 1e-5


def _small_assay(shared_data, tmp_path, rows):
    shutil.copy(shared_data / "dms/wildtype.fasta", tmp_path / "wildtype.fasta")
    source = (shared_data / "dms/IF1_ECOLI_Kelsic_2016.csv").read_text().splitlines()
    (tmp_path / "IF1_ECOLI_Kelsic_2016.csv").write_text("\n".join(source[:6] + rows) + "\n")
    return load_assays(tmp_path, ["IF1_ECOLI_Kelsic_2016"])


def test_double_mutants_are_reported_and_permutations_are_duplicates(runtime, trained, shared_data, tmp_path, capsys):
    from megatron_plm.evaluation.dms import evaluate_assays

    with pytest.raises(InputFormatError, match=r"mutant 'A2C:M1G' repeats row 7"):
        _small_assay(shared_data, tmp_path, ["M1G:A2C,0.3,1", "A2C:M1G,0.3,1"])
    assays = _small_assay(shared_data, tmp_path, ["M1G:A2C,0.3,1"])
    frequencies = {a: 1 / 20 for a in "LAGVSERTIDPKQNFYMHWC"}
    evaluate_assays(load_scoring_model(trained["mlm"], runtime), assays, frequencies)
    assert "1 of 6 mutants change several residues; masked marginals score them as the sum" in capsys.readouterr().err


def test_mask_ratio_and_max_length_outside_the_model_are_refused(runtime, trained):
    mlm, clm = load_scoring_model(trained["mlm"], runtime), load_scoring_model(trained["clm"], runtime)
    records = [("a", TOK.encode("MKTAYIAKQR").astype(np.int64))]
    for ratio in (0.0, 1.5):
        with pytest.raises(ValueError, match=rf"--mask-ratio must be in \(0, 1\], got {ratio}"):
            perplexity(mlm, records, mask_ratio=ratio)
    with pytest.raises(ValueError, match=rf"max_length {clm.context} does not fit .*context of {clm.context} tokens"):
        generate(clm, SamplingConfig(num_sequences=1, max_length=clm.context))
    assert len(generate(clm, SamplingConfig(num_sequences=1, max_length=clm.context - 1))) == 1


def test_transformers_generate_and_pipeline_sample_what_evaluate_generate_samples(runtime, trained, tmp_path):
    """An export, driven only through transformers (AutoTokenizer, model.generate, pipeline), continues a
    prompt, stops at the C-terminus and samples the same proteins as ``evaluate generate`` at the same seed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    out = export_hf(trained["clm"], tmp_path / "hf", runtime)
    tokenizer = AutoTokenizer.from_pretrained(out)
    hf_model = AutoModelForCausalLM.from_pretrained(out).eval()
    ours = load_scoring_model(trained["clm"], runtime)

    settings = dict(temperature=3.0, top_k=20, top_p=0.99)  # hot: the 4-step model reaches the C-terminus
    expected = generate(ours, SamplingConfig(num_sequences=4, max_length=100, seed=11, **settings), "MKTAYIAK")
    assert all(s.startswith("MKTAYIAK") for s in expected)
    torch.manual_seed(11)
    ids = hf_model.generate(
        **tokenizer("MKTAYIAK", return_tensors="pt"), num_return_sequences=4, max_length=101, **settings
    )
    assert tokenizer.batch_decode(ids, skip_special_tokens=True) == expected
    stopped = 0
    for row in ids.tolist():  # nothing but padding after the C-terminus
        if TOK.c_terminus in row:
            stopped += 1
            assert set(row[row.index(TOK.c_terminus) + 1 :]) <= {TOK.pad}
    assert stopped, "no sample reached the C-terminus: the check above checked nothing"

    generator = pipeline("text-generation", model=hf_model, tokenizer=tokenizer)
    torch.manual_seed(11)
    texts = generator("MKTAYIAK", num_return_sequences=4, max_length=101, **settings)
    assert [t["generated_text"] for t in texts] == expected

    # The export's generation_config.json holds evaluate generate's defaults (max_length capped by the context).
    defaults = generate(ours, SamplingConfig(num_sequences=2, max_length=ours.context - 1))
    torch.manual_seed(0)
    ids = hf_model.generate(**tokenizer("", return_tensors="pt"), num_return_sequences=2)
    assert tokenizer.batch_decode(ids, skip_special_tokens=True) == defaults


def test_no_progress_also_silences_transformers_bars(runtime, trained, tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    out = export_hf(trained["clm"], tmp_path / "hf", runtime)
    (tmp_path / "two.fasta").write_text(">a\nMKTAYIAKQR\n>b\nGSSGSSLLE\n")

    def perplexity_cli(*extra):
        command = ["evaluate", "perplexity", "--model", str(out), "--fasta", str(tmp_path / "two.fasta"), *extra]
        done = subprocess.run(
            [sys.executable, "-m", "megatron_plm", *command], cwd=REPO, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stderr

    assert "Loading weights" in perplexity_cli()  # transformers' bar, drawn even into a pipe
    assert "Loading weights" not in perplexity_cli("--no-progress")


def test_perplexity_scores_the_held_out_split_of_a_training_corpus(runtime, trained, sample_corpus, tmp_path):
    """Megatron-LM's eval-only mode: --corpus PREFIX --split test scores the documents the run held out."""
    import subprocess
    import sys

    from conftest import REPO

    from megatron_plm.checkpoint.saved_run import SavedRun
    from megatron_plm.data.corpus import Corpus
    from megatron_plm.data.samples.splits import Split, assign_splits

    data = SavedRun.open(trained["clm"]).data
    corpus = Corpus.open(sample_corpus)
    splits = assign_splits(corpus, tuple(data["split_weights"]), by_cluster=data["split_by_cluster"])
    ids = corpus.record_ids()
    held_out = [ids[d] for d in np.flatnonzero(splits == Split.TEST)][:30]
    out = tmp_path / "per_seq.csv"
    done = subprocess.run(
        [sys.executable, "-m", "megatron_plm", "evaluate", "perplexity", "--model", str(trained["clm"])]
        + ["--corpus", str(sample_corpus), "--split", "test", "--limit", "30", "--output", str(out), "--no-progress"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    assert [r["record_id"] for r in rows] == held_out and len(held_out) == 30
    assert not set(held_out) & {ids[d] for d in np.flatnonzero(splits == Split.TRAIN)}
    sequences = {
        r.record_id: r.sequence for r in read_fasta(REPO / "data/uniref90_esm2_pretraining_sample_10k.fasta.gz")
    }
    model = load_scoring_model(trained["clm"], runtime)
    expected = perplexity(model, [(i, TOK.encode(sequences[i]).astype(np.int64)) for i in held_out[:3]])
    assert [float(r["perplexity"]) for r in rows[:3]] == pytest.approx([s.perplexity for s in expected], rel=1e-5)
    assert f"test split (weights {data['split_weights']})" in done.stdout


def test_dms_cli_scores_one_csv_in_the_covered_region(trained, shared_data, tmp_path):
    """Issue 33: one assay CSV with --wildtype SEQ (no folder), and --region covered: the mutants outside
    the residues the alignment covers are left out and counted in the table."""
    import subprocess
    import sys

    from megatron_plm.evaluation.dms import load_assays

    (assay,) = load_assays(shared_data / "dms", ["BLAT_ECOLX_Stiffler_2015"])
    lines = (shared_data / "dms/BLAT_ECOLX_Stiffler_2015.csv").read_text().splitlines()
    (tmp_path / "blat_tail.csv").write_text("\n".join(lines[:1] + lines[-120:]) + "\n")  # the last 120 mutants
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "megatron_plm",
            "evaluate",
            "dms",
            "--model",
            str(trained["clm"]),
            "--assays",
            str(tmp_path / "blat_tail.csv"),
            "--wildtype",
            assay.wild_type,
            "--msa",
            str(shared_data / "family/BLAT_ECOLX_ColabFold_2202.a3m"),
            "--region",
            "covered",
            "--profile-prior",
            "--output",
            str(tmp_path / "scores.csv"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    outside = sum(int(line.split(",")[0][1:-1]) > 282 for line in lines[-120:])  # residues 283-286
    assert outside > 0
    rows = list(csv.DictReader(open(tmp_path / "scores.csv")))
    assert len(rows) == 120 - outside and {r["DMS_id"] for r in rows} == {"blat_tail"}
    assert "outside" in out.stdout and f"{outside:,} mutants outside it not scored" in out.stdout
    assert "scored only residues 17-282" in out.stdout
    header = next(line for line in out.stdout.splitlines() if line.strip().startswith("DMS_id")).split()
    assert header[:4] == ["DMS_id", "mutants", "outside", "Spearman"] and "model+profile" in header
