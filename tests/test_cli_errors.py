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
    from megatron_plm.data.encode import native_available

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
    from megatron_plm.data.fasta import InputFormatError, read_fasta

    with pytest.raises(InputFormatError, match=rf"{tmp_path}: is a directory"):
        list(read_fasta(tmp_path))


def test_nan_temperature_is_refused():
    from megatron_plm.evaluation.generate import SamplingConfig

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
