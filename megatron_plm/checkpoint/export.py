"""``megatron-plm export-hf`` and ``import-hf``: whole directories, written atomically.

Export loads a checkpoint saved at any TP/PP layout into a TP=1 model in this process
(megatron-core reshards on load), converts with :mod:`megatron_plm.checkpoint.hf`, and writes
``config.json``, ``model.safetensors`` and tokenizer files that ``transformers`` loads with no
custom code (a CLM also ``generation_config.json``: sampling as ``evaluate generate`` samples). Import is the reverse, writing model tensors megatron-core can load at any layout
(use them with ``checkpoint.init_from``). Both write to a temporary name and rename when
complete: a failure leaves no partial output directory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch

from megatron_plm.checkpoint import hf
from megatron_plm.checkpoint.manifest import write_manifest
from megatron_plm.checkpoint.distributed import IMPORT_FILE
from megatron_plm.checkpoint.saved_run import SavedRun
from megatron_plm.runtime.distributed import Runtime

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _check_output(final: Path) -> None:
    """Before loading anything: the output must not exist and its parent must be writable."""
    from megatron_plm.outputs import prepare_output_dir

    if final.exists():
        raise FileExistsError(f"{final} already exists; choose another output directory or remove it")
    prepare_output_dir(final.parent, what=f"the parent of {final}")


@contextmanager
def _staged_directory(final: Path):
    """Yield a temporary sibling of ``final``; rename it to ``final`` only if the block succeeds."""
    if final.exists():
        raise FileExistsError(f"{final} already exists; choose another output directory or remove it")
    staging = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.rename(final)


def full_state_dict(run: SavedRun, runtime: Runtime) -> dict[str, torch.Tensor]:
    """The model's tensors at TP=1, PP=1, however the checkpoint was sharded, on the host (they are written)."""
    from megatron_plm.models.build import build_model_chunk

    if runtime.world_size != 1:
        raise ValueError("conversion runs in one process (it loads the whole model); launch it without torchrun")
    # The reference layers, whatever backend trained it: conversion needs no speed, and checkpoints of every
    # backend share their keys (megatron-core saves local LayerNorms under Transformer Engine's names).
    chunk = build_model_chunk(
        dataclasses.replace(run.model, attention_backend="local"), runtime, objective=run.objective
    )
    run.load_weights(chunk)
    return {
        k: v.detach().to("cpu", copy=True)
        for k, v in chunk.state_dict().items()
        if isinstance(v, torch.Tensor) and "_extra_state" not in k
    }


@dataclass(kw_only=True)
class ExportConfig:
    checkpoint: str = field(metadata={"cli": {"positional": True}})
    """A checkpoint directory (or a run's save directory: its latest checkpoint)."""
    output: str = field(metadata={"cli": {"positional": True}})
    """Directory to write (config.json, model.safetensors, tokenizer files)."""
    dtype: Literal["fp32", "bf16"] = "fp32"
    """The dtype of the written weights."""


@dataclass(kw_only=True)
class ImportConfig:
    source: str = field(metadata={"cli": {"positional": True}})
    """A transformers model directory, or a Hugging Face Hub id (owner/name)."""
    output: str = field(metadata={"cli": {"positional": True}})
    """Checkpoint directory to write."""


def export_hf(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    runtime: Runtime,
    *,
    dtype: Literal["fp32", "bf16"] = "fp32",
    show_progress: bool = False,
) -> Path:
    """Write ``output`` as a ``transformers`` model directory (with tokenizer) for the checkpoint."""
    from safetensors.torch import save_file

    from megatron_plm.data.tokenizers.hf import save_hf_tokenizer

    from megatron_plm.outputs import follow_umask
    from megatron_plm.progress import Progress

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    final = Path(output)
    _check_output(final)
    run = SavedRun.open(checkpoint)
    objective, model, subword = run.objective, run.model, run.subword_tokenizer
    with Progress(3, f"export {final.name}", unit="stages", enabled=show_progress) as progress:
        state = full_state_dict(run, runtime)
        progress.update(1)
        tensors = {k: v.to(DTYPES[dtype]).contiguous() for k, v in hf.to_hf(state, objective, model).items()}
        extras = hf.hf_extra_tensors(
            objective, model, set(tensors)
        )  # rotary frequencies stay fp32, as transformers keeps them
        tensors.update({k: v if k.endswith("inv_freq") else v.to(DTYPES[dtype]) for k, v in extras.items()})
        progress.update(1)
        with _staged_directory(final) as staging:
            config = hf.hf_config(objective, model)
            config.torch_dtype = "float32" if dtype == "fp32" else "bfloat16"
            config.save_pretrained(str(staging))
            if objective == "clm":  # model.generate and pipeline() sample as `evaluate generate` does
                from megatron_plm.models.generation import SamplingConfig, generation_config

                default = SamplingConfig(max_length=min(SamplingConfig.max_length, model.seq_length - 1))
                generation_config(default, hf.hf_vocab_size(objective, model)).save_pretrained(str(staging))
            save_file(hf.to_file_names(tensors), str(staging / "model.safetensors"), metadata={"format": "pt"})
            follow_umask(staging / "model.safetensors")  # save_file writes it owner-only
            save_hf_tokenizer(staging, objective, model_max_length=model.seq_length, subword=subword)
        progress.update(1)
    return final


HUB_FILES = ["config.json", "*.safetensors", "*.json", "*.txt", "*.model"]
"""What :func:`resolve_hf_source` fetches of a Hub repository: config, weights, tokenizer (no .bin/.h5 copies)."""


def resolve_hf_source(source: str | os.PathLike) -> Path:
    """A local ``transformers`` directory as it is; a Hugging Face Hub id (``owner/name``, not a local path)
    fetched into the Hub cache. No network, no such repository or no access is one ``ValueError`` line."""
    path = Path(source)
    if path.exists() or len(path.parts) != 2 or str(source).startswith((".", "/")):
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(source), allow_patterns=HUB_FILES))
    except Exception as error:  # offline, no route, 401/404: each library version words it differently
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise ValueError(
            f"{source} is not a local directory, and fetching it from the Hugging Face Hub failed "
            f"({type(error).__name__}: {reason}); download it where there is network "
            f"(hf download {source} --local-dir DIR) and give DIR"
        ) from None


def import_hf(source: str | os.PathLike, output: str | os.PathLike, runtime: Runtime) -> Path:
    """Write ``output``: model tensors of a ``transformers`` ESM-2 / GPT-NeoX model, loadable at any layout."""
    from megatron.core import dist_checkpointing
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from megatron_plm.config import to_plain
    from megatron_plm.models.build import build_model_chunk

    if runtime.world_size != 1:
        raise ValueError("conversion runs in one process (it loads the whole model); launch it without torchrun")
    _check_output(Path(output))
    source = resolve_hf_source(source)
    objective, model = hf.model_config_from_hf(hf.load_config(source), str(source))
    auto = AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM
    hf_state = hf.load_pretrained(auto, source, dtype=torch.float32).state_dict()
    chunk = build_model_chunk(model, runtime, objective=objective)
    result = chunk.load_state_dict(hf.from_hf(hf_state, objective, model), strict=False)
    missing = [k for k in result.missing_keys if "_extra_state" not in k]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{source}: conversion left tensors unset {missing[:5]} or unknown {result.unexpected_keys[:5]}"
        )
    final = Path(output)
    with _staged_directory(final) as staging:
        dist_checkpointing.save(chunk.sharded_state_dict(), str(staging))
        config = {"objective": objective, "model": to_plain(model)}
        (staging / IMPORT_FILE).write_text(json.dumps({"config": config, "source": str(source)}, indent=2) + "\n")
        write_manifest(staging)
    return final
