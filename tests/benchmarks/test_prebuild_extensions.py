"""tools/prebuild_extensions.py: prebuilt extensions are used only for the Python, torch, GPU architecture and
csrc/ sources they were built for; anything else is named and refused, so the GPU suite compiles instead."""

import importlib.util
import platform

import torch
from conftest import REPO

spec = importlib.util.spec_from_file_location("prebuild_extensions", REPO / "tools/prebuild_extensions.py")
prebuild = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prebuild)

FILES = "megatron_plm/kernels/_rotary_cuda.cpython-312-x86_64-linux-gnu.so"


def write_manifest(directory, **fields):
    entries = {"python": "3.12", "torch": "2.11.0", "archs": "90", "sources": prebuild.sources_hash(), "files": FILES}
    entries.update(fields)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "manifest.txt").write_text("".join(f"{k}={v}\n" for k, v in entries.items()))
    (directory / FILES).parent.mkdir(parents=True, exist_ok=True)
    (directory / FILES).write_bytes(b"\x7fELF")


def test_a_matching_manifest_serves_and_each_mismatch_is_named(tmp_path):
    write_manifest(tmp_path)
    manifest = prebuild.read_manifest(tmp_path)
    assert prebuild.mismatches(manifest, python="3.12", torch="2.11.0", arch="90") == []
    why = prebuild.mismatches(manifest, python="3.11", torch="2.13.0", arch="100")
    assert why == [
        "built for Python 3.12, this is 3.11",
        "built against torch 2.11.0, this is 2.13.0",
        "built for sm_90, this GPU is sm_100",
    ]
    write_manifest(tmp_path, sources="0" * 16)
    assert prebuild.mismatches(prebuild.read_manifest(tmp_path), python="3.12", torch="2.11.0", arch=None) == [
        "built from other csrc/ sources than these"
    ]


def test_check_and_install_refuse_what_does_not_serve(tmp_path, capsys):
    write_manifest(tmp_path)
    assert prebuild.main(["check", str(tmp_path), "--python-version", "3.12", "--torch-version", "2.11.0"]) == 0
    (tmp_path / FILES).unlink()
    assert prebuild.main(["check", str(tmp_path), "--python-version", "3.12", "--torch-version", "2.11.0"]) == 1
    assert "is missing" in capsys.readouterr().out
    # This interpreter is not the one the manifest names: install copies nothing and says why.
    write_manifest(tmp_path, python="2.7")
    assert prebuild.main(["install", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"this is {'.'.join(platform.python_version_tuple()[:2])}" in out and "not using" in out
    assert prebuild.main(["install", str(tmp_path / "absent")]) == 1
    assert "compiling instead" in capsys.readouterr().out
    assert torch.__version__.split("+")[0] == prebuild.running_versions()["torch"]
