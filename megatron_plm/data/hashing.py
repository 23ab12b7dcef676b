"""Vectorised 64-bit hashing in NumPy (splitmix64's mixer): record-id keys for cluster joins and duplicate
checks, and the counter-based randomness of sampling. Shared by preprocessing, the corpus and samples,
so it sits below all three."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
"""2^64 / phi: the increment that spreads consecutive counters over the 64-bit range."""
_KEY_SEED = np.uint64(0x6A09E667F3BCC908)
_CHECK_SEED = np.uint64(0xBB67AE8584CAA73B)
_CHECK_MULTIPLIER = np.uint64(0xFF51AFD7ED558CCD)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective mix of uint64 values (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_fields(buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 64-bit key and a 32-bit check word for each byte field ``buffer[start : start + length]``.

    Depends only on the field's bytes (not on its neighbours or the batch): the length seeds the
    state, then each little-endian 8-byte word (zero-filled past the end) is folded in."""
    buffer = np.asarray(buffer, dtype=np.uint8)
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    padded = np.concatenate([buffer, np.zeros(8, dtype=np.uint8)])
    windows = as_strided(padded, shape=(len(buffer) + 1, 8), strides=(1, 1), writeable=False)
    size = lengths.astype(np.uint64) * GOLDEN
    key = mix64(size + _KEY_SEED)
    check = mix64(size ^ _CHECK_SEED)
    active = np.flatnonzero(lengths > 0)
    offset = 0
    while active.size:
        words = np.ascontiguousarray(windows[starts[active] + offset]).view("<u8").reshape(-1)
        remaining = np.minimum(lengths[active] - offset, 8).astype(np.uint64)
        low_bytes = (np.uint64(1) << (remaining * np.uint64(8))) - np.uint64(1)
        words &= np.where(remaining == 8, np.uint64(~np.uint64(0)), low_bytes)
        key[active] = mix64(key[active] ^ words)
        check[active] = mix64((check[active] + words) * _CHECK_MULTIPLIER)
        offset += 8
        active = active[lengths[active] > offset]
    return key, (check >> np.uint64(32)).astype(np.uint32)


def hash_lines(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """:func:`hash_fields` of each ``\\n``-terminated line of ``data`` (record ids as the encoder joins them)."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buffer == ord("\n"))
    starts = np.r_[0, ends[:-1] + 1] if len(ends) else ends
    return hash_fields(buffer, starts, ends - starts)
