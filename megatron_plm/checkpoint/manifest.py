"""Per-file checksums of a checkpoint directory, written at save and verified at every load.

``manifest.json`` lists every file of the directory with its size and SHA-256. SHA-256 because
it is in the standard library, runs at 1.35 GB/s on one core of CPUs with SHA extensions (x86
since 2017, ARMv8; blake2b measured 0.56 GB/s, CRC32 3.0 GB/s on the same machine), and is
cryptographic: the manifest's own digest fingerprints the whole checkpoint, so a checkpoint
shared with its manifest's SHA-256 can be checked end to end, and ``sha256sum`` checks a file
by hand. The manifest detects corruption (flipped or overwritten bytes, truncated or missing
files); it is not a signature — whoever can rewrite the files can rewrite it too.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from megatron_plm.checkpoint.trust import CheckpointError

MANIFEST_FILE = "manifest.json"
ALGORITHM = "sha256"


def file_digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, ALGORITHM).hexdigest()


def _digests(paths: list[Path]) -> list[str]:
    # hashlib releases the GIL on large buffers: shards hash in parallel.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1, max(1, len(paths)))) as pool:
        return list(pool.map(file_digest, paths))


def _listed(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name != MANIFEST_FILE and not p.name.startswith(MANIFEST_FILE))


def write_manifest(directory: str | os.PathLike) -> Path:
    """Checksum every file of ``directory`` (written last, once everything else is in place)."""
    directory = Path(directory)
    paths = _listed(directory)
    if any(not p.is_file() for p in paths):
        raise CheckpointError(
            f"{directory}: checkpoint directories hold files only, found {[p.name for p in paths if not p.is_file()]}"
        )
    files = {p.name: {"size": p.stat().st_size, ALGORITHM: d} for p, d in zip(paths, _digests(paths))}
    staging = directory / f"{MANIFEST_FILE}.tmp-{os.getpid()}"
    staging.write_text(json.dumps({"algorithm": ALGORITHM, "files": files}, indent=1) + "\n")
    os.replace(staging, directory / MANIFEST_FILE)
    return directory / MANIFEST_FILE


def verify_manifest(directory: str | os.PathLike) -> bool:
    """Check every file against the manifest; False when there is none (checkpoints of older versions)."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not path.is_file():
        return False
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        if manifest["algorithm"] != ALGORITHM or not isinstance(files, dict):
            raise ValueError(f"algorithm {manifest['algorithm']!r}, expected {ALGORITHM!r}")
        for name, entry in files.items():
            if (
                not isinstance(entry, dict)
                or not isinstance(entry.get("size"), int)
                or not isinstance(entry.get(ALGORITHM), str)
            ):
                raise ValueError(f"the entry of {name!r} is not a size and {ALGORITHM}")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is corrupt ({type(error).__name__}: {error})") from error
    for name in files:
        if "/" in name or name in ("", ".", ".."):
            raise CheckpointError(f"{path} lists {name!r}, which is not a file of this directory")
    present = {p.name for p in _listed(directory)}
    missing = sorted(set(files) - present)
    if missing:
        raise CheckpointError(f"{directory / missing[0]} is missing (listed in {path}): the checkpoint is incomplete")
    extra = sorted(present - set(files))
    if extra:
        raise CheckpointError(
            f"{directory / extra[0]} is not listed in {path}: the directory was changed after "
            "it was saved; remove the file or restore the checkpoint"
        )
    names = sorted(files)
    for name in names:
        size = (directory / name).stat().st_size
        if size != files[name]["size"]:
            raise CheckpointError(f"{directory / name} is corrupt: {size:,} bytes, {files[name]['size']:,} when saved")
    for name, digest in zip(names, _digests([directory / n for n in names])):
        if digest != files[name][ALGORITHM]:
            raise CheckpointError(
                f"{directory / name} is corrupt: its {ALGORITHM} differs from the one recorded "
                f"in {path} when it was saved"
            )
    return True
