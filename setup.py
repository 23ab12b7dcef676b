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
import sys

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext


def _extensions() -> list:
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError:
        print("setup.py: pybind11 not installed; skipping the C++ extensions", file=sys.stderr)
        return []
    return [
        Pybind11Extension(
            "megatron_plm.data._fasta_ext",
            ["csrc/fasta/fasta_encode.cpp"],
            cxx_std=17,
            extra_compile_args=["-O3"],
        ),
    ]


class OptionalBuildExt(build_ext):
    """Build what compiles; a failed extension leaves its pure-Python reference in charge."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as error:  # compiler missing or failing: warn, do not fail the install
            print(f"setup.py: could not build {ext.name} ({error}); using the Python fallback", file=sys.stderr)


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
        # Scaling-law plots.
        "matplotlib>=3.7",
    ],
    extras_require={"test": ["pytest>=8"]},
    entry_points={"console_scripts": ["megatron-plm=megatron_plm.cli:main"]},
)
