"""Global batches from a consumed-sample count: the resume contract.

Step ``t`` of a run uses samples ``[c, c + G)`` of the dataset, where ``c`` is the number
of samples consumed before it and ``G`` the global batch size; data-parallel rank ``r``
of ``D`` takes the ``r``-th of ``D`` equal slices, cut into microbatches. The global
batch is the same whatever ``D`` is, so a run resumed from ``c`` (at any data-parallel
size) sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from megatron_plm.data.samples.batch import SAMPLE_KEYS, Batch, batch_from_arrays


def read_samples(dataset, indices: np.ndarray) -> list[tuple[object, np.ndarray, dict]]:
    """The corpus-reading half of :func:`fetch_samples`: ``(dataset, rows, read)`` per dataset that
    ``indices`` draw from (one, or each part of a megatron-core ``BlendedDataset``)."""
    indices = np.asarray(indices, dtype=np.int64)
    if hasattr(dataset, "read"):
        return [(dataset, np.arange(len(indices)), dataset.read(indices))]
    which = np.asarray(dataset.dataset_index)[indices]
    within = np.asarray(dataset.dataset_sample_index)[indices]
    parts = []
    for part in np.unique(which):
        rows = np.flatnonzero(which == part)
        parts.append((dataset.datasets[int(part)], rows, dataset.datasets[int(part)].read(within[rows])))
    return parts


def finish_samples(parts: list[tuple[object, np.ndarray, dict]], size: int) -> dict[str, np.ndarray]:
    """``[size, s]`` sample arrays from :func:`read_samples`' parts, each finished by its dataset."""
    if len(parts) == 1:
        return parts[0][0].finish(parts[0][2])
    out: dict[str, np.ndarray] = {}
    for dataset, rows, read in parts:
        arrays = dataset.finish(read)
        for key in SAMPLE_KEYS:
            if key not in out:
                out[key] = np.empty((size,) + arrays[key].shape[1:], dtype=arrays[key].dtype)
            out[key][rows] = arrays[key]
    return out


def fetch_samples(dataset, indices: np.ndarray) -> dict[str, np.ndarray]:
    """``[b, s]`` sample arrays for ``indices``: one ``samples()`` call per dataset, also through a
    megatron-core ``BlendedDataset`` (whose own ``__getitem__`` goes one sample at a time)."""
    return finish_samples(read_samples(dataset, indices), len(indices))


@dataclass
class BatchLoader:
    dataset: object
    global_batch_size: int
    micro_batch_size: int
    data_parallel_rank: int
    data_parallel_size: int
    causal: bool
    consumed_samples: int = 0
    read_ahead: bool = True
    """Read the next step's proteins from the corpus on a helper thread while this step is used:
    that half of the work (random accesses into a memory-mapped corpus, NumPy releasing the GIL)
    overlaps the caller's. The batches are the same either way."""
    _reader: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    _ahead: tuple[int, Future] | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        per_rank, remainder = divmod(self.global_batch_size, self.data_parallel_size)
        if remainder or per_rank % self.micro_batch_size:
            raise ValueError(
                f"global batch size ({self.global_batch_size}) must be a multiple of micro batch size "
                f"({self.micro_batch_size}) x data-parallel size ({self.data_parallel_size})"
            )
        self.per_rank = per_rank

    def next_step(self) -> list[Batch]:
        """This rank's microbatches for the next step; advances ``consumed_samples`` by one global batch."""
        start = self.consumed_samples + self.data_parallel_rank * self.per_rank
        if self.consumed_samples + self.global_batch_size > len(self.dataset):
            raise IndexError(
                f"the dataset holds {len(self.dataset)} samples; step needs up to "
                f"{self.consumed_samples + self.global_batch_size} (build it for more samples)"
            )
        if self._ahead is not None and self._ahead[0] == start:
            reads = self._ahead[1].result()  # a read that failed raises here, as it would inline
        else:
            reads = self._read(start)
        self._ahead = None
        self.consumed_samples += self.global_batch_size
        following = start + self.global_batch_size
        if self.read_ahead and self.consumed_samples + self.global_batch_size <= len(self.dataset):
            if self._reader is None:
                self._reader = ThreadPoolExecutor(1, thread_name_prefix="read-ahead")
            self._ahead = (following, self._reader.submit(self._read, following))
        return [batch_from_arrays(finish_samples(parts, self.micro_batch_size), causal=self.causal) for parts in reads]

    def _read(self, start: int) -> list:
        return [
            read_samples(self.dataset, np.arange(j, j + self.micro_batch_size))
            for j in range(start, start + self.per_rank, self.micro_batch_size)
        ]
