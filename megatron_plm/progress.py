"""Progress of long work: a ``tqdm`` bar on a terminal, a plain line every so often in a log.

A bar redrawn many times a second is what a person at a terminal wants and what a CI log must not
get; a job writing to a file gets one line per ``interval`` seconds (default 30, environment
``MEGATRON_PLM_PROGRESS_INTERVAL``) and a last one when the work ends, if it took that long.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")


class Progress:
    """``update(n)`` as work completes; ``close()`` (or use as a context manager) at the end."""

    def __init__(
        self,
        total: float | None,
        desc: str,
        *,
        unit: str = "it",
        enabled: bool = True,
        stream: TextIO | None = None,
        interval: float | None = None,
    ) -> None:
        self.total, self.desc, self.unit, self.done = total, desc, unit, 0.0
        self.stream = stream or sys.stderr
        if interval is None:
            interval = float(os.environ.get("MEGATRON_PLM_PROGRESS_INTERVAL", 30))
        self.interval = interval
        self.start = self.last = time.monotonic()
        self.lines = 0
        self.bar = None
        self.enabled = enabled
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", file=self.stream, leave=False)

    def add_total(self, n: float) -> None:
        """Work discovered on the way (e.g. one batch list per call)."""
        self.total = (self.total or 0) + n
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def update(self, n: float = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.monotonic() - self.last >= self.interval:
            self._line()

    def _line(self) -> None:
        now = time.monotonic()
        elapsed = now - self.start
        scale = 2**20 if self.unit == "B" else 1
        unit = "MB" if self.unit == "B" else self.unit
        done = f"{self.done / scale:,.0f}" + (f"/{self.total / scale:,.0f}" if self.total else "") + f" {unit}"
        if self.total:
            done += f" ({self.done / self.total:.0%})"
        rate = self.done / scale / elapsed if elapsed > 0 else 0.0
        eta = f", about {(self.total - self.done) / scale / rate:.0f} s left" if self.total and rate > 0 else ""
        print(f"{self.desc}: {done} in {elapsed:.0f} s ({rate:,.1f} {unit}/s{eta})", file=self.stream, flush=True)
        self.last, self.lines = now, self.lines + 1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self.lines:
            self._line()
        self.enabled = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(
    items: Iterable[T],
    desc: str,
    *,
    total: int | None = None,
    unit: str = "it",
    enabled: bool = True,
    weight: Callable[[T], float] | None = None,
) -> Iterator[T]:
    """Iterate ``items``, reporting each one as done (as ``weight(item)`` units of work when given)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, unit=unit, enabled=enabled) as progress:
        for item in items:
            yield item
            progress.update(weight(item) if weight else 1)


def silence_library_progress() -> None:
    """Turn off ``transformers``' and ``huggingface_hub``'s own bars (loading weights, downloads), which
    ``--no-progress`` covers too; a no-op for a library that is not installed."""
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass


class Heartbeat:
    """A line every ``interval`` seconds while opaque work runs (a library call that reports nothing, such as
    SentencePiece's training): ``describe()`` says what is known so far."""

    def __init__(self, describe, *, enabled: bool = True, stream: TextIO | None = None, interval: float | None = None):
        import threading

        self.describe, self.enabled = describe, enabled
        self.stream = stream or sys.stderr
        if interval is None:
            interval = float(os.environ.get("MEGATRON_PLM_PROGRESS_INTERVAL", 30))
        self.interval, self.start = interval, time.monotonic()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            print(f"{self.describe()} ({time.monotonic() - self.start:.0f} s)", file=self.stream, flush=True)

    def __enter__(self) -> "Heartbeat":
        if self.enabled:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join()
