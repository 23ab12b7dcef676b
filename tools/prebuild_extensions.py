#!/usr/bin/env python
"""Extensions compiled ahead for another machine, so a lent GPU spends no minute on nvcc.

    PYTHON312 tools/prebuild_extensions.py build prebuilt [--archs 90]   # here: with the GPU machine's Python and torch
    python tools/prebuild_extensions.py check prebuilt --python-version 3.12 --torch-version 2.11.0
    python tools/prebuild_extensions.py install prebuilt                  # there (benchmarks/gpu_suite.sh does)

``build`` runs ``setup.py build_ext`` (every extension required, in parallel) with the interpreter that runs
it, into DIR, and writes DIR/manifest.txt: that interpreter's Python and torch versions, the CUDA
architectures, and a hash of ``csrc/``. A C++ extension of torch is tied to the exact torch it was built
against, so ``install`` copies the files into the package only when the running Python, torch, GPU
architecture and sources all match, and then keeps them only if they import and pass the kernels'
self-check; otherwise it removes what it copied and exits 1 (the caller then compiles). ``check`` tests a
manifest against named versions without installing anything (the CPU rehearsal of the GPU run).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MANIFEST = "manifest.txt"


def sources_hash() -> str:
    """sha256 over every file of ``csrc/`` (path and bytes): prebuilt files of other sources are stale."""
    digest = hashlib.sha256()
    for path in sorted(p for p in (REPO / "csrc").rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def running_versions() -> dict[str, str]:
    import torch

    return {"python": ".".join(platform.python_version_tuple()[:2]), "torch": torch.__version__.split("+")[0]}


def read_manifest(directory: Path) -> dict[str, str]:
    path = directory / MANIFEST
    if not path.is_file():
        raise SystemExit(f"prebuild_extensions: {path} not found (build it with 'tools/prebuild_extensions.py build')")
    entries = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    missing = {"python", "torch", "archs", "sources", "files"} - entries.keys()
    if missing:
        raise SystemExit(f"prebuild_extensions: {path} lacks {', '.join(sorted(missing))}; rebuild it")
    return entries


def mismatches(manifest: dict[str, str], *, python: str, torch: str, arch: str | None) -> list[str]:
    """Why prebuilt files of ``manifest`` cannot serve this Python, torch, GPU architecture and these sources."""
    why = []
    if manifest["python"] != python:
        why.append(f"built for Python {manifest['python']}, this is {python}")
    if manifest["torch"] != torch:
        why.append(f"built against torch {manifest['torch']}, this is {torch}")
    if arch is not None and arch not in manifest["archs"].split(";"):
        why.append(f"built for sm_{manifest['archs'].replace(';', ', sm_')}, this GPU is sm_{arch}")
    if manifest["sources"] != sources_hash():
        why.append("built from other csrc/ sources than these")
    return why


def build(directory: Path, archs: str, jobs: int) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "MEGATRON_PLM_CUDA_ARCHS": archs, "MEGATRON_PLM_REQUIRE_EXTENSIONS": "1"}
        command = [sys.executable, "setup.py", "build_ext", "--build-lib", f"{scratch}/lib"]
        command += ["--build-temp", f"{scratch}/temp", "--parallel", str(jobs)]
        if subprocess.run(command, cwd=REPO, env=env).returncode != 0:
            return 1
        built = sorted(Path(scratch, "lib").rglob("*.so"))
        files = []
        for path in built:
            relative = path.relative_to(Path(scratch, "lib"))
            (directory / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, directory / relative)
            if shutil.which("strip"):  # debug info is 90% of each file, and what travels is limited
                subprocess.run(["strip", "--strip-debug", str(directory / relative)], check=True)
            files.append(str(relative))
    versions = running_versions()
    manifest = {**versions, "archs": archs, "sources": sources_hash(), "files": ";".join(files)}
    (directory / MANIFEST).write_text("".join(f"{k}={v}\n" for k, v in manifest.items()))
    print(f"prebuild_extensions: {len(files)} extensions for Python {versions['python']}, torch {versions['torch']}, ")
    print(f"sm_{archs} in {directory} ({sum((directory / f).stat().st_size for f in files) / 1e6:.1f} MB)")
    return 0


def check(directory: Path, python: str, torch_version: str) -> int:
    manifest = read_manifest(directory)
    why = mismatches(manifest, python=python, torch=torch_version, arch=None)
    missing = [f for f in manifest["files"].split(";") if not (directory / f).is_file()]
    why += [f"{directory / f} is missing" for f in missing]
    if why:
        print(
            f"prebuild_extensions: {directory} cannot serve Python {python} / torch {torch_version}: {'; '.join(why)}"
        )
        return 1
    print(
        f"prebuild_extensions: {directory} serves Python {python}, torch {torch_version}, sm_{manifest['archs']}: "
        f"{manifest['files'].replace(';', ', ')}"
    )
    return 0


def install(directory: Path) -> int:
    import torch

    manifest = read_manifest(directory)
    arch = "%d%d" % torch.cuda.get_device_capability(0) if torch.cuda.is_available() else None
    why = mismatches(manifest, **running_versions(), arch=arch)
    if why:
        print(f"prebuild_extensions: not using {directory}: {'; '.join(why)}")
        return 1
    copied = []
    for name in manifest["files"].split(";"):
        target = REPO / name
        shutil.copy2(directory / name, target)
        copied.append(target)
    # A fresh interpreter imports them and runs the self-check (a GPU machine fails it for an unbuilt kernel).
    verdict = subprocess.run([sys.executable, "-m", "megatron_plm", "env", "--check-kernels"], cwd=REPO)
    if verdict.returncode != 0:
        for target in copied:
            target.unlink(missing_ok=True)
        print(
            f"prebuild_extensions: the prebuilt extensions of {directory} failed to import or to pass the "
            "self-check; removed them"
        )
        return 1
    print(f"prebuild_extensions: installed {len(copied)} prebuilt extensions from {directory}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="compile every extension with this interpreter into DIR")
    build_parser.add_argument("directory", type=Path)
    build_parser.add_argument("--archs", default="90", help="CUDA architectures, ';'-separated (default: 90, Hopper)")
    build_parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    check_parser = commands.add_parser("check", help="whether DIR serves the named Python and torch")
    check_parser.add_argument("directory", type=Path)
    check_parser.add_argument("--python-version", required=True)
    check_parser.add_argument("--torch-version", required=True)
    install_parser = commands.add_parser("install", help="copy DIR's extensions into the package if they serve here")
    install_parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    if args.command == "build":
        return build(args.directory.resolve(), args.archs, args.jobs)
    if args.command == "check":
        return check(args.directory.resolve(), args.python_version, args.torch_version)
    if not (args.directory / MANIFEST).is_file():
        print(f"prebuild_extensions: no prebuilt extensions in {args.directory}; compiling instead")
        return 1
    return install(args.directory.resolve())


if __name__ == "__main__":
    sys.exit(main())
