"""When a run saves, and the save itself: the trainer asks :meth:`Checkpointer.due` each step."""

from __future__ import annotations

from pathlib import Path

from megatron_plm.training.build import TrainingState
from megatron_plm.training.config import TrainConfig


class Checkpointer:
    """Saves under ``checkpoint.save`` every ``checkpoint.save_interval`` steps, before a launch stops
    early (a signal, ``training.exit_interval``) and at the end; nothing when ``checkpoint.save`` is unset."""

    def __init__(self, config: TrainConfig, state: TrainingState):
        self.config, self.state = config, state
        self.enabled = bool(config.checkpoint.save)
        self.last: Path | None = None
        """The newest checkpoint this launch wrote."""

    def due(self, step: int, *, stopping: bool = False, last: bool = False) -> bool:
        interval = self.config.checkpoint.save_interval
        return self.enabled and (stopping or last or bool(interval and step % interval == 0))

    def save(self, step: int, consumed_samples: int, compute: list[dict]) -> Path:
        """Collective: a checkpoint of this run at ``step``; older ones beyond ``checkpoint.keep_last`` go."""
        from megatron_plm.checkpoint.distributed import save_checkpoint

        self.last = save_checkpoint(
            self.config.checkpoint.save,
            iteration=step,
            consumed_samples=consumed_samples,
            state=self.state,
            config=self.config.to_dict(),
            keep_last=self.config.checkpoint.keep_last,
            compute=compute,
        )
        return self.last
