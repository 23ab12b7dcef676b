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
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}  # an empty cache
    done = subprocess.run(
        [sys.executable, "-m", "megatron_plm", *command], capture_output=True, text=True, env=environment, cwd=tmp_path
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"megatron-plm {command[0]}: error: facebook/esm2_t6_8M_UR50D is not a local directory")
    assert "hf download facebook/esm2_t6_8M_UR50D" in lines[0]
