"""What loading a checkpoint directory trusts: data, never code.

A checkpoint from a collaborator or a hub is untrusted input. Three of its files are pickles
that torch or megatron-core would otherwise unpickle with full power (a pickle can run any
Python): torch distributed checkpoint's ``.metadata`` (a plain ``pickle.load``), the non-tensor
items inside ``*.distcp`` shards (``torch.load(weights_only=False)`` in torch's load planner),
and our ``rng_rank<R>.pt``. :func:`check_pickles` reads the first two through restricted
unpicklers that admit only the classes a checkpoint legitimately holds, before megatron-core
is handed the directory; :func:`load_rng_file` reads the third with ``weights_only=True``.
Anything else is refused with a :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import torch

METADATA_FILE = ".metadata"


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, truncated, or holds something loading must not run."""


# Module -> class names torch distributed checkpoint pickles into ``.metadata`` (None: any name
# of the module that is a class or enum defined there).
_METADATA_CLASSES: dict[str, set[str] | None] = {
    "torch.distributed.checkpoint.metadata": None,
    "torch.distributed.checkpoint.planner": {
        "SavePlan",
        "WriteItem",
        "WriteItemType",
        "TensorWriteData",
        "ReadItem",
        "LoadItemType",
        "LoadPlan",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "collections": {"OrderedDict"},
    "builtins": {"set", "frozenset", "slice"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, handle, path: Path):
        super().__init__(handle)
        self.path = path

    def find_class(self, module: str, name: str):
        allowed = _METADATA_CLASSES.get(module, ())
        if module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        if allowed is None or (allowed and name in allowed):
            found = super().find_class(module, name)
            if allowed is None and not isinstance(found, type):
                raise CheckpointError(
                    f"{self.path}: refers to {module}.{name}, which is not a checkpoint metadata class"
                )
            return found
        raise CheckpointError(
            f"{self.path}: refuses to load: it asks to import {module}.{name}, which torch distributed checkpoint "
            "metadata never holds (a pickle that would run code). Do not load this checkpoint."
        )


def read_metadata(directory: Path):
    """Torch distributed checkpoint metadata of ``directory``, unpickled with checkpoint classes only."""
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} not found: {directory} is not a megatron-core checkpoint")
    try:
        with open(path, "rb") as handle:
            return _MetadataUnpickler(handle, path).load()
    except CheckpointError:
        raise
    except Exception as error:  # truncated or not a pickle at all
        raise CheckpointError(
            f"{path} is truncated or corrupt ({type(error).__name__}: {error}); the checkpoint cannot be loaded"
        ) from error


def _check_byte_items(directory: Path, metadata) -> None:
    """Non-tensor items of the shards, which torch's load planner unpickles with full power."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    for index, info in metadata.storage_data.items():
        if not isinstance(metadata.state_dict_metadata.get(index.fqn), BytesStorageMetadata):
            continue
        relative = str(info.relative_path)
        shard = Path(directory) / relative
        if os.path.isabs(relative) or ".." in Path(relative).parts or "/" in relative:
            raise CheckpointError(
                f"{directory / METADATA_FILE}: item {index.fqn} points outside the checkpoint ({relative!r})"
            )
        if getattr(info, "transform_descriptors", None):
            raise CheckpointError(
                f"{shard}: item {index.fqn} is stored with transforms "
                f"{info.transform_descriptors}, which these checkpoints never use"
            )
        with open(shard, "rb") as handle:
            handle.seek(info.offset)
            blob = handle.read(info.length)
        if len(blob) != info.length:
            raise CheckpointError(f"{shard} is truncated: item {index.fqn} ends past the end of the file")
        try:
            torch.load(io.BytesIO(blob), weights_only=True)
        except Exception as error:
            raise CheckpointError(
                f"{shard}: refuses to load item {index.fqn}: it is not plain data "
                f"({str(error).strip().splitlines()[0][:200]}). Do not load this checkpoint."
            ) from error


def check_pickles(directory: Path) -> None:
    """Refuse ``directory`` if loading it through megatron-core would unpickle anything but data."""
    _check_byte_items(Path(directory), read_metadata(directory))
    common = Path(directory) / "common.pt"  # megatron-core's non-sharded state (torch.load, default settings)
    if common.is_file():
        try:
            torch.load(common, map_location="cpu", weights_only=True)
        except Exception as error:
            raise CheckpointError(
                f"{common} is truncated, corrupt or not plain data ({str(error).strip().splitlines()[0][:200]})"
            ) from error


def _numpy_rng_globals() -> list:
    # np.random.get_state() is ('MT19937', uint32 keys, pos, has_gauss, cached_gaussian): the keys
    # array is the only non-primitive, and it needs these to be rebuilt.
    return [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_rng_file(path: Path) -> dict:
    """A rank's saved RNG states, read as data only (tensors, ints, tuples, numpy's key array)."""
    try:
        with torch.serialization.safe_globals(_numpy_rng_globals()):
            return torch.load(path, weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"{path}: refuses to load: not plain RNG state data ({str(error).strip().splitlines()[0][:200]}). "
            "Do not load this checkpoint, or delete the file to resume with fresh RNG states."
        ) from error
