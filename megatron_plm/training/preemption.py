"""Stopping on a signal without losing steps.

SLURM sends SIGTERM before a preemption or time limit (and, with ``sbatch --signal=USR1@120``, a
chosen signal some seconds earlier); Ctrl-C sends SIGINT. The handler only records the signal;
after each step the ranks agree (one all-reduce of a flag) so that every rank stops after the same
step, saves, and the launcher exits with :data:`EXIT_PREEMPTED`. A second SIGINT interrupts at once.
"""

from __future__ import annotations

import signal
import threading

import torch

from megatron_plm.runtime.distributed import Runtime

EXIT_PREEMPTED = 75
"""``megatron-plm train``'s exit status after a signal-triggered save (sysexits' EX_TEMPFAIL:
try again). Relaunching the same command continues from the saved step."""


class StopSignals:
    """Context manager: catches SIGTERM, SIGINT and ``extra`` while the loop runs."""

    def __init__(self, runtime: Runtime, extra: str | None = None):
        self.runtime = runtime
        self.signals = [signal.SIGTERM, signal.SIGINT] + ([signal.Signals[extra]] if extra else [])
        self.received: signal.Signals | None = None
        self._previous: dict = {}

    def _handle(self, number, frame) -> None:
        if self.received == signal.SIGINT and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(number)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self  # Python delivers signals to the main thread only; the caller keeps its handlers
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self) -> bool:
        """Collective: True on every rank when any rank has received a signal."""
        flag = torch.tensor([1 if self.received else 0], dtype=torch.int32, device=self.runtime.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def name(self) -> str:
        return self.received.name if self.received else "a signal on another rank"
