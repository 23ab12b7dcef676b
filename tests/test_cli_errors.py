"""Bad input to the command line: one line naming the file or field, the problem and the fix; exit status 2."""

import json

import pytest

from conftest import REPO
from megatron_plm.cli import main

TINY = REPO / "examples/configs/tiny_clm.yaml"


def one_line_error(capsys, argv) -> str:
    assert main([str(a) for a in argv]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    "content, message",
    [
        ("model:\n  num_layers: [2\n", r"bad\.yaml:\d+: invalid YAML"),
        ("- name: a\n- name: b\n", r"bad\.yaml: a run config is a YAML mapping \(key: value\), got a list"),
    ],
)
def test_train_config_files(capsys, tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    import re

    assert re.search(message, one_line_error(capsys, ["train", "--config", path]))
    assert "is a directory" in one_line_error(capsys, ["train", "--config", tmp_path])


def test_huge_seq_length_is_refused_with_its_memory_estimate(capsys, tmp_path):
    line = one_line_error(
        capsys,
        [
            "train",
            "--config",
            TINY,
            "data.seq_length=1000000",
            "training.micro_batch_size=1",
            f"checkpoint.save={tmp_path / 'ck'}",
            "data.sources=[{prefix: /nonexistent}]",
        ],
    )
    assert "this run needs about" in line and "GiB per process (data.seq_length=1,000,000" in line
    assert "lower data.seq_length or training.micro_batch_size" in line


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("cr.fasta", b">a\rMKT\r>b\rMKV\r", "cr.fasta:1: uses CR-only line endings"),
        ("bom.fasta", b"\xef\xbb\xbf>a\nMKT\n", "bom.fasta:1: starts with a UTF-8 byte-order mark"),
        (
            "bom.jsonl",
            b"\xef\xbb\xbf" + json.dumps({"id": "a", "sequence": "MKT"}).encode() + b"\n",
            "bom.jsonl:1: starts with a UTF-8 byte-order mark",
        ),
        ("adir", None, "adir: is a directory; give its files"),
    ],
)
@pytest.mark.parametrize("implementation", ["native", "reference"])
def test_preprocess_inputs_are_diagnosed(capsys, tmp_path, name, content, message, implementation):
    from megatron_plm.data.preprocess.encode import native_available

    if implementation == "native" and not native_available():
        pytest.skip("C++ encoder not built")
    path = tmp_path / name
    path.mkdir() if content is None else path.write_bytes(content)
    line = one_line_error(
        capsys,
        [
            "preprocess",
            "--input",
            path,
            "--output-prefix",
            tmp_path / "out" / "c",
            "--implementation",
            implementation,
            "--no-progress",
        ],
    )
    assert message in line
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_evaluate_reads_no_directory_as_fasta(tmp_path):
    from megatron_plm.data.preprocess.fasta import InputFormatError, read_fasta

    with pytest.raises(InputFormatError, match=rf"{tmp_path}: is a directory"):
        list(read_fasta(tmp_path))


def test_nan_temperature_is_refused():
    from megatron_plm.models.generation import SamplingConfig

    for value in (float("nan"), float("inf"), 0.0):
        with pytest.raises(ValueError, match="temperature must be > 0"):
            SamplingConfig(temperature=value).validate()


def test_evaluate_defaults_are_the_shipped_data_from_any_folder(monkeypatch, tmp_path):
    from megatron_plm.cli import build_parser
    from megatron_plm.shipped_data import DATA_ENV

    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # not the checkout: no data/ here
    dms = build_parser().parse_args(["evaluate", "dms", "--model", "m"])
    assert dms.unigram_fasta.is_file() and (dms.assays / "wildtype.fasta").is_file()
    assert len(list(dms.assays.glob("*_*_*.csv"))) == 5
    assert build_parser().parse_args(["evaluate", "probe", "--model", "m"]).data.is_file()
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "team"))  # the override: a folder of the same layout
    dms = build_parser().parse_args(["evaluate", "dms", "--model", "m"])
    assert dms.assays == tmp_path / "team" / "dms" and dms.unigram_fasta.is_file()  # the sample stays


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["dms", "--unigram-fasta", "{tmp}/missing.fasta.gz"], "--unigram-fasta"),
        (["dms", "--assays", "{tmp}"], r"--assays \(its wildtype\.fasta\)"),
        (["dms", "--assays", "{tmp}/none"], "--assays"),
        (["dms", "--msa", "{tmp}/none.a3m"], "--msa"),
        (["probe", "--data", "{tmp}/ss.tsv.gz"], "--data"),
        (["embed", "--fasta", "{tmp}/x.fasta", "--output", "{tmp}/e.npz"], "--fasta"),
    ],
)
def test_evaluate_inputs_are_checked_before_the_model_naming_the_flag(capsys, tmp_path, argv, flag):
    import re

    # The model does not exist either: the inputs are checked first, each error naming its flag.
    argv = ["evaluate", *[a.format(tmp=tmp_path) for a in argv], "--model", tmp_path / "no-model"]
    assert re.search(rf"error: {flag}: no such (file|folder): {tmp_path}", one_line_error(capsys, argv))


def test_a_missing_default_says_where_it_is_looked_for(monkeypatch, tmp_path):
    from megatron_plm import shipped_data

    monkeypatch.delenv(shipped_data.DATA_ENV, raising=False)
    with pytest.raises(
        FileNotFoundError, match=r"^--data: no such file: .*the checkout's data/.*pass --data FILE or set"
    ):
        shipped_data.require_input(shipped_data.REPO_DATA / "missing.tsv.gz", "--data")  # e.g. a wheel install
    monkeypatch.setenv(shipped_data.DATA_ENV, str(tmp_path))
    with pytest.raises(
        FileNotFoundError, match=rf"^--assays: no such folder: {tmp_path}/dms; \$MEGATRON_PLM_SHARED_DATA"
    ):
        shipped_data.require_input(shipped_data.data_path(shipped_data.DMS_ASSAYS), "--assays", directory=True)


# ---- silent misreadings and damaged files: each one line naming the input, exit status 2 --------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ('checkpoint.save=""', "checkpoint.save is an empty path; give a path, or null"),
        ('logging.metrics_file=""', "logging.metrics_file is an empty path"),
        (
            "training.global_batch_size=1099511627776",
            r"training.train_iters \(30\) x training.global_batch_size \(1,099,511,627,776\) = .* samples .* would need "
            r"about [\d,.]+ GiB of memory, more than the",
        ),
        ("training.train_iters=1000000000000000000000000000000", "would need about"),
        ("logging.log_interval=0", r"logging.log_interval must be >= 1, got 0"),
        ("checkpoint.save_interval=-1", r"checkpoint.save_interval must be >= 0 \(0: never\), got -1"),
        ("training.eval_interval=-2", r"training.eval_interval must be >= 0"),
        ("training.exit_interval=-1", r"training.exit_interval must be >= 0"),
    ],
)
def test_train_settings_refused_at_start_up(capsys, tmp_path, override, message):
    import re

    argv = ["train", "--config", TINY, f"checkpoint.save={tmp_path}", override, "data.sources=[{prefix: /nonexistent}]"]
    line = one_line_error(capsys, argv)
    assert re.search(message, line), line
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


@pytest.mark.parametrize("budget", ["-1", "0", "1e300", "nan", "inf"])
def test_plan_budget_outside_any_fit_is_refused(capsys, budget):
    line = one_line_error(capsys, ["plan", "--budget-flops", budget])
    assert "--budget-flops must be between 1e+09 and 1e+28 FLOPs" in line


@pytest.mark.parametrize(
    "name, content, options, message",
    [
        (
            "obj.jsonl",
            b'{"id": {"a": 1}, "sequence": "MKT"}\n',
            [],
            "obj.jsonl:1: field 'id' must be a non-empty string or an integer, got {\"a\": 1}",
        ),
        (
            "list.jsonl",
            b'{"id": ["a"], "sequence": "MKT"}\n',
            [],
            "list.jsonl:1: field 'id' must be a non-empty string",
        ),
        ("hash.a3m", b">q\nMKT-AY\n>h\nMK#-AY\n", [], "hash.a3m:3 (record 'h'): invalid residue '#' (line 4"),
        ("insertions.a3m", b">q\nmktay\n>h\nmktay\n", [], "the first record (the query) has no match columns"),
    ],
)
def test_preprocess_and_msa_weights_misreadings(capsys, tmp_path, name, content, options, message):
    path = tmp_path / name
    path.write_bytes(content)
    line = one_line_error(capsys, ["preprocess", "--input", path, "--output-prefix", tmp_path / "out" / "c", *options])
    assert message in line
    if name.endswith(".a3m"):  # msa-weights reads alignments as preprocess does
        assert message in one_line_error(capsys, ["msa-weights", path, "--output-prefix", tmp_path / "w"])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_output_prefix_that_is_a_directory(capsys, tmp_path, real_fasta):
    for prefix in (f"{tmp_path / 'out'}/", tmp_path):
        line = one_line_error(capsys, ["preprocess", "--input", real_fasta, "--output-prefix", prefix])
        assert "names a directory; give a path and a file name stem" in line


def test_two_mutations_at_one_site_are_refused(tmp_path):
    from megatron_plm.data.preprocess.fasta import InputFormatError
    from megatron_plm.evaluation.dms import parse_mutant

    with pytest.raises(InputFormatError, match=r"a\.csv:7: mutant 'S2Y:S2A': two mutations at position 2"):
        parse_mutant("S2Y:S2A", "MSK", tmp_path / "a.csv", 7)
    assert parse_mutant("S2Y:K3A", "MSK", tmp_path / "a.csv", 7) == [("S", 1, "Y"), ("K", 2, "A")]


def test_prompt_is_a_sequence_or_an_existing_file(tmp_path, capsys):
    from megatron_plm.cli import read_prompts

    assert read_prompts("MKTAY") == [("prompt", "MKTAY")]
    (tmp_path / "prefixes.fasta").write_text(">p1\nmkt\n")
    assert read_prompts(str(tmp_path / "prefixes.fasta")) == [("p1", "MKT")]
    for typo in ("prefixes", str(tmp_path / "prefixes.fa"), "prefixes.fasta"):  # once residues 'PREFIXES'
        with pytest.raises(FileNotFoundError, match=rf"--prompt '{typo}': no such file, and not a sequence"):
            read_prompts(typo)
    long = "MKTAYIAKQR" * 40  # 400 residues: once probed as a file name (OSError: File name too long)
    assert read_prompts(long) == [("prompt", long)]
    with pytest.raises(ValueError, match=r"--prompt: \['J'\] are not amino-acid letters"):
        read_prompts("MKJ" * 100)
    (tmp_path / "empty.fasta").write_text("")
    with pytest.raises(ValueError, match=r"empty\.fasta"):
        read_prompts(str(tmp_path / "empty.fasta"))
    # the CLI refuses it before loading any model
    assert "no such file, and not a sequence" in one_line_error(
        capsys,
        [
            "evaluate",
            "generate",
            "--model",
            tmp_path / "no_model",
            "--prompt",
            "prefixes",
            "--output",
            tmp_path / "g.fa",
        ],
    )
    for task, flag, value, message in [
        ("probe", "--chains", "-5", "--chains must be >= 1, got -5"),
        ("perplexity", "--limit", "-1", "--limit must be >= 0, got -1"),
        ("perplexity", "--mask-ratio", "1.5", "--mask-ratio must be between 0 and 1, got 1.5"),
        ("embed", "--batch-size", "0", "--batch-size must be >= 1, got 0"),
    ]:
        needs = {
            "perplexity": ["--fasta", tmp_path / "x.fasta"],
            "embed": ["--fasta", tmp_path / "x.fasta", "--output", tmp_path / "e.npz"],
        }
        argv = ["evaluate", task, "--model", tmp_path / "no_model", *needs.get(task, []), flag, value]
        assert message in one_line_error(capsys, argv)


@pytest.mark.parametrize(
    "content, message",
    [
        ("garbage", "not valid JSON"),
        ("[1]", "holds a JSON list, not an object"),
        ('{"kN": 1}', "lacks the field 'E'"),
        ('{"kN": "x", "a": 1, "kD": 1, "b": 1}', "the law's coefficients must be finite numbers"),
    ],
)
def test_damaged_scaling_law_file_is_named(capsys, tmp_path, content, message):
    law = tmp_path / "fit.json"
    law.write_text(content)
    line = one_line_error(capsys, ["plan", "--budget-flops", "1e20", "--law", law])
    assert f"{law}: {message}" in line and "written by `megatron-plm scaling fit`" in line


def test_msa_weights_output_prefix_is_checked_before_the_work(capsys, tmp_path):
    alignment = tmp_path / "tiny.a3m"
    alignment.write_text(">q\nMKTAY\n>h\nMKTAW\n")
    for prefix in (f"{tmp_path / 'out'}/", tmp_path):
        line = one_line_error(capsys, ["msa-weights", alignment, "--output-prefix", prefix])
        assert "--output-prefix" in line and "names a directory" in line
    (tmp_path / "file").write_text("x")
    line = one_line_error(capsys, ["msa-weights", alignment, "--output-prefix", tmp_path / "file" / "w"])
    assert "cannot be written" in line
    assert main(["msa-weights", str(alignment), "--output-prefix", str(tmp_path / "w")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "tiny.a3m", "w.clusters.tsv", "w.weights.tsv"]


def test_unknown_assay_name_is_refused(tmp_path, shared_data):
    from megatron_plm.evaluation.dms import load_assays

    with pytest.raises(
        ValueError, match=r"--assay BLAT_ECOLX_Stifler_2015: not in .*wildtype\.fasta \(assays there: BLAT"
    ):
        load_assays(shared_data / "dms", ["BLAT_ECOLX_Stifler_2015", "IF1_ECOLI_Kelsic_2016"])


@pytest.mark.parametrize("content", ["garbage", "[1, 2]", '{"model_type": "no-such-model"}'])
def test_damaged_transformers_config_is_named(capsys, tmp_path, content):
    model = tmp_path / "hf"
    model.mkdir()
    (model / "config.json").write_text(content)
    for argv in (
        ["evaluate", "probe", "--model", model, "--chains", "4"],
        ["import-hf", model, tmp_path / "ckpt"],
    ):
        line = one_line_error(capsys, argv)
        assert f"{model}: " in line and "config.json must be a transformers model config" in line
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["import-hf", "facebook/esm2_t6_8M_UR50D", "OUT"],
        ["evaluate", "perplexity", "--model", "facebook/esm2_t6_8M_UR50D", "--fasta", "x.fasta"],
    ],
)
def test_a_hub_id_without_network_is_one_clear_line(command, tmp_path):
    import os
    import subprocess
    import sys

    command = [str(tmp_path / "out") if part == "OUT" else part for part in command]
    (tmp_path / "x.fasta").write_text(">a\nMKT\n")  # inputs are checked before the model: this one exists
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}  # an empty cache
    done = subprocess.run(
        [sys.executable, "-m", "megatron_plm", *command], capture_output=True, text=True, env=environment, cwd=tmp_path
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"megatron-plm {command[0]}: error: facebook/esm2_t6_8M_UR50D is not a local directory")
    assert "hf download facebook/esm2_t6_8M_UR50D" in lines[0]
