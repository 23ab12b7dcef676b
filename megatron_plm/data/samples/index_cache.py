"""Sample indices built once, cached on disk, memory-mapped by every rank.

Splits, sampling units, document orders and sample indices cost time and memory that grow
with the corpus. As megatron-core's datasets do, one process builds them and saves them
under a name derived from a hash of everything that shapes them (the corpus's identity
included); every other rank waits for the entry and maps it with ``np.load(mmap_mode="r")``,
so its private memory stays small whatever the corpus size. Unlike megatron-core's
``path_to_cache`` (files written in place, found by name), an entry is a directory staged under
a temporary name and renamed into place whole, with a manifest giving every file's size, CRC-32
and sampled SHA-256: a half-written or corrupt entry is never used; the builder rebuilds it.

Verification costs what it must, once: the builder checks the files it wrote in full (CRC-32 of
the bytes on disk against the arrays in memory). Every open after that checks the manifest (the
description, so a changed build hash is a different entry), each file's size and its sampled
SHA-256 (64 blocks of 64 KiB, as the corpus fingerprint: 4 MiB read whatever the size), so a torn,
truncated or rewritten file is caught without every rank of every relaunch reading gigabytes of
``doc_order``. The full CRC-32 of every file at open is there on request
(``data.cache_verify: true`` or ``MEGATRON_PLM_CACHE_VERIFY=1``); entries written before the
sampled hash existed are checked in full.

Who builds: ``global`` — rank 0 of the job (a cache directory every node sees); ``local`` — the
first rank of each node (node-local disks; nodes that build the same entry at once are
harmless, the first rename wins). Ranks are read from torchrun's environment (``RANK``,
``LOCAL_RANK``); a lone process builds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from megatron_plm.data.corpus import fingerprint as sampled_sha256
from megatron_plm.safe_io import check_free_space

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
_MANIFEST = "manifest.json"
_CRC_BLOCK = 1 << 26
VERIFY_ENV = "MEGATRON_PLM_CACHE_VERIFY"
"""Set to 1 to CRC-32 every file of every entry at open (as ``data.cache_verify: true``)."""


class IndexCacheError(RuntimeError):
    """The cache cannot be used: the message names the path and the fix."""


def description_hash(description: dict) -> str:
    """The entry name's hash: md5 of the sorted JSON description (as megatron-core names its caches)."""
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def corpus_fingerprint(prefix: str | os.PathLike) -> dict:
    """What distinguishes one corpus from another at the same path, cheaply: its metadata, the
    sizes of its files and a hash of their first and last MiB (a re-preprocessed corpus changes them)."""
    from megatron_plm.data.corpus import corpus_paths

    fingerprint = {}
    for name, path in sorted(corpus_paths(prefix).items()):
        if not path.exists():
            continue
        size = path.stat().st_size
        digest = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as handle:
            digest.update(handle.read(1 << 20))
            if size > 1 << 20:
                handle.seek(max(1 << 20, size - (1 << 20)))
                digest.update(handle.read())
        fingerprint[name] = {"bytes": size, "blake2b": digest.hexdigest()}
    return fingerprint


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as handle:
        while block := handle.read(_CRC_BLOCK):
            crc = zlib.crc32(block, crc)
    return crc


def _array_crc32(path: Path, array: np.ndarray) -> int:
    """CRC-32 of the ``.npy`` file ``path`` would be if it holds ``array``: its header read from disk,
    its data taken from memory (compared with the file's own CRC-32, a write that did not land shows)."""
    data = memoryview(array.reshape(-1)).cast("B") if array.size else memoryview(b"")
    with open(path, "rb") as handle:
        header = handle.read(path.stat().st_size - data.nbytes)
    crc = zlib.crc32(header)
    for start in range(0, data.nbytes, _CRC_BLOCK):
        crc = zlib.crc32(data[start : start + _CRC_BLOCK], crc)
    return crc


def verify_requested(configured: bool = False) -> bool:
    """Full verification at open: the config asks for it or ``MEGATRON_PLM_CACHE_VERIFY`` is set (not 0)."""
    return configured or os.environ.get(VERIFY_ENV, "0").strip().lower() not in ("", "0", "false", "no")


@dataclass(frozen=True, kw_only=True)
class Role:
    rank: int = 0
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> "Role":
        return cls(rank=int(os.environ.get("RANK", 0)), local_rank=int(os.environ.get("LOCAL_RANK", 0)))

    def builds(self, builder: Literal["global", "local"]) -> bool:
        return (self.rank if builder == "global" else self.local_rank) == 0


class IndexCache:
    """A directory of entries, each a dict of arrays under a described name."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        builder: Literal["global", "local"] = "global",
        timeout_s: float = 3600.0,
        role: Role | None = None,
        verify: bool = False,
        check_space: bool = True,
    ):
        self.directory = Path(directory)
        self.builder = builder
        self.timeout_s = timeout_s
        self.role = role or Role.from_environment()
        self.verify = verify_requested(verify)
        """CRC-32 every file at open (else sizes + sampled SHA-256; the builder always checks in full)."""
        self.check_space = check_space
        """Refuse to write an entry the filesystem cannot hold (before writing any of it)."""
        self.built: list[Path] = []
        """Entries this process built (the rest it loaded): for logs and tests."""

    def entry(self, name: str, description: dict) -> Path:
        return self.directory / f"{name}-{description_hash(description)[:16]}"

    def get(self, name: str, description: dict, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The entry's arrays, memory-mapped; built (by ``build()``) first if missing or corrupt."""
        entry = self.entry(name, description)
        if self.role.builds(self.builder):
            loaded = self._load(entry, description)
            if isinstance(loaded, dict):
                return loaded
            if loaded is not None:
                logger.warning("index cache %s is unusable (%s): rebuilding it", entry, loaded)
            return self._build(entry, description, build)
        return self._wait(entry, description)

    # ---- reading ------------------------------------------------------------------------------------
    def _load(self, entry: Path, description: dict, *, full: bool | None = None):
        """The entry's contents, None when absent, or a string saying why it cannot be used. ``full``:
        CRC-32 every file (default: when verification was requested), else check the sampled SHA-256."""
        full = self.verify if full is None else full
        manifest_path = entry / _MANIFEST
        if not manifest_path.exists():
            return None
        try:
            manifest = json.loads(manifest_path.read_bytes().decode("utf-8"))
        except (OSError, ValueError) as error:
            return f"unreadable manifest: {error}"
        if not isinstance(manifest, dict):
            return f"manifest holds a JSON {type(manifest).__name__}, not an object"
        if manifest.get("format_version") != CACHE_FORMAT_VERSION or manifest.get("description") != json.loads(
            json.dumps(description, sort_keys=True, default=str)
        ):
            return "manifest describes different data (a hash collision or a hand-edited entry)"
        files = manifest.get("files")
        if not isinstance(files, dict) or not files:
            return "manifest lists no files"
        for key, info in files.items():
            if (
                not isinstance(info, dict)
                or not all(isinstance(info.get(k), int) for k in ("bytes", "crc32"))
                or not isinstance(info.get("shape"), list)
                or not isinstance(info.get("dtype"), str)
                or not isinstance(info.get("sha256_sampled", ""), str)
                or not isinstance(key, str)
                or "/" in key
            ):
                return f"manifest entry {key!r} is not a file description"
        arrays = {}
        for key, info in files.items():
            path = entry / f"{key}.npy"
            try:
                size = path.stat().st_size
            except OSError:
                return f"{path.name} missing"
            if size != info["bytes"]:
                return f"{path.name} has {size} bytes, the manifest says {info['bytes']} (truncated?)"
            if full or "sha256_sampled" not in info:  # on request, or an entry older than the sampled hash
                if _crc32(path) != info["crc32"]:
                    return f"{path.name} fails its CRC-32 check"
            elif sampled_sha256(path) != info["sha256_sampled"]:
                return f"{path.name} fails its sampled SHA-256 check (rewritten or torn)"
            try:
                array = np.load(path, mmap_mode="r" if 0 not in info["shape"] else None)
            except (OSError, ValueError) as error:
                return f"{path.name}: {error}"
            if list(array.shape) != info["shape"] or str(array.dtype) != info["dtype"]:
                return (
                    f"{path.name} holds {array.dtype}{list(array.shape)}, "
                    f"the manifest says {info['dtype']}{info['shape']}"
                )
            arrays[key] = array
        return arrays

    def _wait(self, entry: Path, description: dict):
        started = time.monotonic()
        delay, reason = 0.05, "not there yet"
        while True:
            loaded = self._load(entry, description)
            if isinstance(loaded, dict):
                return loaded
            reason = loaded or reason
            waited = time.monotonic() - started
            if waited > self.timeout_s:
                who = "rank 0" if self.builder == "global" else "local rank 0 of this node"
                raise IndexCacheError(
                    f"rank {self.role.rank} waited {waited:.0f} s for the index cache {entry} ({reason}), which "
                    f"{who} builds: check that rank's log for an error. If it is still building (a very large "
                    "corpus), raise data.cache_timeout_s; if nodes do not share this directory, set "
                    "data.cache_builder: local."
                )
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    # ---- writing ------------------------------------------------------------------------------------
    def _build(self, entry: Path, description: dict, build):
        host = socket.gethostname()
        staging = entry.with_name(f"{entry.name}.tmp-{host}-{os.getpid()}")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            _remove_abandoned(entry, host)
            staging.mkdir()
        except OSError as error:
            raise IndexCacheError(
                f"cannot write the index cache in {self.directory} ({error.strerror or error}): set data.cache_dir "
                "to a writable directory, or data.cache: false to build the indices in memory on every rank"
            ) from error
        try:
            arrays = build()
            if self.check_space:
                check_free_space(
                    self.directory,
                    sum(np.asarray(a).nbytes + 256 for a in arrays.values()),
                    what=f"the index cache entry {entry.name}",
                    fix="set data.cache_dir to a filesystem with room, or data.cache: false",
                )
            files = {}
            for key, array in arrays.items():
                path = staging / f"{key}.npy"
                array = np.ascontiguousarray(array)
                np.save(path, array)
                crc = _crc32(path)
                if crc != _array_crc32(path, array):  # verified once, here, where it is built
                    raise IndexCacheError(f"{path} does not read back as written: is the disk failing?")
                files[key] = {
                    "bytes": path.stat().st_size,
                    "crc32": crc,
                    "sha256_sampled": sampled_sha256(path),
                    "dtype": str(array.dtype),
                    "shape": list(array.shape),
                }
            manifest = {
                "format_version": CACHE_FORMAT_VERSION,
                "description": description,
                "files": files,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            (staging / _MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str) + "\n")
            del arrays
            if entry.exists():  # unusable (checked by the caller) or just written by another node
                if isinstance(self._load(entry, description, full=True), dict):
                    shutil.rmtree(staging)
                    return self._load(entry, description)
                aside = entry.with_name(f"{entry.name}.bad-{socket.gethostname()}-{os.getpid()}")
                os.replace(entry, aside)
                shutil.rmtree(aside, ignore_errors=True)
            try:
                os.replace(staging, entry)
            except OSError:  # another builder renamed first
                shutil.rmtree(staging, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.built.append(entry)
        loaded = self._load(entry, description, full=False)
        if not isinstance(loaded, dict):
            raise IndexCacheError(
                f"the index cache {entry} just written does not read back ({loaded}): is the disk full?"
            )
        return loaded


def _remove_abandoned(entry: Path, host: str) -> None:
    """Staging directories (``.tmp-``) and damaged entries moved aside (``.bad-``) of this entry, left by
    builders on this host that no longer run (killed)."""
    for kind in ("tmp", "bad"):
        for staged in entry.parent.glob(f"{entry.name}.{kind}-{host}-*"):
            try:
                os.kill(int(staged.name.rsplit("-", 1)[1]), 0)
            except ProcessLookupError:
                shutil.rmtree(staged, ignore_errors=True)
            except (ValueError, PermissionError):
                pass
