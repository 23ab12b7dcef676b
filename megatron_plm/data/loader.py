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

from megatron_plm.data.batch import SAMPLE_KEYS, Batch, batch_from_arrays


def fetch_samples(dataset, indices: np.ndarray) -> dict[str, np.ndarray]:
    """``[b, s]`` sample arrays for ``indices``: one ``samples()`` call per dataset, also through a
    megatron-core ``BlendedDataset`` (whose own ``__getitem__`` goes one sample at a time)."""
    indices = np.asarray(indices, dtype=np.int64)
    if hasattr(dataset, "samples"):
        return dataset.samples(indices)
    which = np.asarray(dataset.dataset_index)[indices]
    within = np.asarray(dataset.dataset_sample_index)[indices]
    out: dict[str, np.ndarray] = {}
    for part in np.unique(which):
        rows = np.flatnonzero(which == part)
        arrays = dataset.datasets[int(part)].samples(within[rows])
        for key in SAMPLE_KEYS:
            if key not in out:
                out[key] = np.empty((len(indices),) + arrays[key].shape[1:], dtype=arrays[key].dtype)
            out[key][rows] = arrays[key]
    return out


def touch_samples(dataset, indices: np.ndarray) -> None:
    """Map the corpus pages samples ``indices`` will read (``ProteinDataset.touch``), through a blend too."""
    indices = np.asarray(indices, dtype=np.int64)
    if hasattr(dataset, "touch"):
        dataset.touch(indices)
        return
    if not hasattr(dataset, "datasets"):
        return
    which = np.asarray(dataset.dataset_index)[indices]
    within = np.asarray(dataset.dataset_sample_index)[indices]
    for part in np.unique(which):
        touch_samples(dataset.datasets[int(part)], within[which == part])


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
    """Touch the next step's documents from a helper thread while this step is used (see
    ``ProteinDataset.touch``): its page faults overlap the caller's work. Reads only; batches are
    the same either way."""
    _reader: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    _reading: Future | None = field(default=None, init=False, repr=False)

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
        indices = np.arange(start, start + self.per_rank)
        self.consumed_samples += self.global_batch_size
        self._read_ahead(start + self.global_batch_size)
        return [
            batch_from_arrays(fetch_samples(self.dataset, indices[j : j + self.micro_batch_size]), causal=self.causal)
            for j in range(0, self.per_rank, self.micro_batch_size)
        ]

    def _read_ahead(self, start: int) -> None:
        if not self.read_ahead or start + self.per_rank > len(self.dataset):
            return
        if self._reading is not None and not self._reading.done():
            return  # still touching an earlier step: skip rather than queue work behind it
        if self._reader is None:
            self._reader = ThreadPoolExecutor(1, thread_name_prefix="read-ahead")
        self._reading = self._reader.submit(touch_samples, self.dataset, np.arange(start, start + self.per_rank))
