"""ESM-2 / BERT masking: choose residue positions, corrupt them 80/10/10, supervise only them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, kw_only=True)
class MaskingConfig:
    mask_ratio: float = 0.15
    """Probability that a residue position is selected for prediction (the paper found 10-20% best)."""
    mask_token_prob: float = 0.8
    """Of the selected: replaced by ``<mask>``."""
    random_token_prob: float = 0.1
    """Of the selected: replaced by a random standard amino acid. The rest stay unchanged."""

    def validate(self) -> None:
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"data.masking.mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.mask_token_prob < 0 or self.random_token_prob < 0 or self.mask_token_prob + self.random_token_prob > 1:
            raise ValueError(
                "data.masking.mask_token_prob and data.masking.random_token_prob must be >= 0 and sum to at most 1, "
                f"got {self.mask_token_prob} and {self.random_token_prob}"
            )


def mask_tokens(
    tokens: np.ndarray,
    maskable: np.ndarray,
    config: MaskingConfig,
    *,
    mask_id: int,
    replacement_ids: np.ndarray,
    draws: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(corrupted tokens, selected)``; labels are the original ``tokens`` where ``selected``.

    ``maskable`` marks residue positions (specials and padding are never selected); ``draws`` are
    three arrays of uniforms in [0, 1), one per position: selection, corruption kind, replacement.
    """
    select, kind, replace_with = draws
    selected = maskable & (select < config.mask_ratio)
    corrupted = tokens.copy()
    to_mask = selected & (kind < config.mask_token_prob)
    to_random = selected & ~to_mask & (kind < config.mask_token_prob + config.random_token_prob)
    corrupted[to_mask] = mask_id
    if to_random.any():
        choice = (replace_with[to_random] * len(replacement_ids)).astype(np.int64)
        corrupted[to_random] = replacement_ids[choice]
    return corrupted, selected
