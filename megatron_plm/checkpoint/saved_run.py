"""A saved run, opened once: the one way to read a checkpoint directory's run.

Resume, ``checkpoint.init_from``, ``export-hf`` and evaluation all start from the same questions —
which ``iter_*`` does ``latest`` name, are its files intact, and what was the run (objective, model,
tokenizer, orientation)? :meth:`SavedRun.open` answers them once: it resolves ``latest``, verifies
the directory (manifest checksums and pickles, :func:`~megatron_plm.checkpoint.distributed.verify_checkpoint`)
and reads the saved run config a single time. Loading weights from it afterwards does not verify again.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from megatron_plm.checkpoint.distributed import (
    IMPORT_FILE,
    STATE_FILE,
    latest_checkpoint,
    load_model_tensors,
    read_run_file,
    verify_checkpoint,
)
from megatron_plm.config import from_dict
from megatron_plm.models.config import ModelConfig


@dataclass(frozen=True)
class SavedRun:
    directory: Path
    """The checkpoint itself (an ``iter_*`` directory, or an ``import-hf`` output), ``latest`` resolved."""
    config: dict
    """The run config as saved (plain YAML types)."""
    state: dict | None
    """``train_state.json``: step, consumed samples, compute phases, LR schedule (None for imported weights)."""

    @classmethod
    def open(cls, path: str | os.PathLike, *, verify: bool = True) -> SavedRun:
        """The checkpoint at ``path``: a run's save directory (its ``latest``), one ``iter_*`` or an
        ``import-hf`` directory. ``verify=False`` skips the checksums (a caller that verified already)."""
        directory = latest_checkpoint(path) or Path(path)
        found = [directory / name for name in (STATE_FILE, IMPORT_FILE) if (directory / name).is_file()]
        if not found:
            problem = "does not exist" if not directory.exists() else f"has no {STATE_FILE} or {IMPORT_FILE}"
            raise ValueError(f"{path} is not a megatron_plm checkpoint ({directory} {problem})")
        if verify:
            verify_checkpoint(directory)
        payload = read_run_file(found[0])
        return cls(
            directory=directory, config=payload["config"], state=payload if found[0].name == STATE_FILE else None
        )

    @staticmethod
    def holds_one(path: str | os.PathLike) -> bool:
        """Whether ``path`` is one of our checkpoints (or a run directory with a ``latest`` one); reads nothing else."""
        directory = latest_checkpoint(path) or Path(path)
        return any((directory / name).is_file() for name in (STATE_FILE, IMPORT_FILE))

    @property
    def objective(self) -> str:
        return self.config["objective"]

    @functools.cached_property
    def model(self) -> ModelConfig:
        """The model as trained: its shape, context (``data.seq_length``) and vocabulary size."""
        return from_dict(ModelConfig, self.config["model"], "model")

    @property
    def data(self) -> dict:
        """The saved ``data`` section ({} for imported weights)."""
        return self.config.get("data", {})

    @property
    def reverse(self) -> bool:
        """A CLM that also saw proteins C->N (``data.reverse_prob`` > 0): it can score both orientations."""
        return float(self.data.get("reverse_prob", 0.0) or 0.0) > 0

    @property
    def iteration(self) -> int:
        return self.state["iteration"] if self.state else 0

    @property
    def compute(self) -> list[dict]:
        """Tokens and FLOPs of the phases that produced these weights ([] for imported weights)."""
        return self.state.get("compute", []) if self.state else []

    @functools.cached_property
    def subword_tokenizer(self):
        """The subword tokenizer the run trained with (``data.tokenizer``), or None for residues; its
        vocabulary must still match the model's."""
        from megatron_plm.data.tokenizers.subword import SubwordTokenizer

        path = self.data.get("tokenizer")
        if path is None:
            return None
        try:
            tokenizer = SubwordTokenizer.load(path)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{self.directory} was trained with data.tokenizer={path!r}: {error}") from None
        if self.model.vocab_size != tokenizer.vocab_size:
            raise ValueError(
                f"{self.directory}: the model has {self.model.vocab_size} tokens but {path} has "
                f"{tokenizer.vocab_size}: the tokenizer directory changed since training"
            )
        return tokenizer

    def load_weights(self, chunk, *, body_only: bool = False) -> list[str]:
        """Load the model tensors (saved at any layout) into ``chunk``; ``body_only`` keeps the chunk's heads
        (CLM -> MLM transfer). Returns the checkpoint keys loaded."""
        return load_model_tensors(self.directory, chunk, body_only=body_only, verify=False)
