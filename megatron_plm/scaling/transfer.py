"""CLM -> MLM transfer in the language of the MLM scaling law.

A model of N parameters that reaches MLM loss L after D MLM tokens, starting from a CLM-pretrained body,
behaves like an MLM trained from scratch on D_eff tokens, where L = E + A/N^alpha + B/D_eff^beta. The
effectively transferred tokens are D_eff - D. With equal-compute runs at several CLM shares, the best
share is the minimum of a parabola of loss against the share (the study found ~10-20%).
"""

from __future__ import annotations

import numpy as np

from megatron_plm.scaling.laws import ParametricLaw


def effective_tokens(law: ParametricLaw, N: float, loss: float) -> float:
    """D_eff with law.loss(N, D_eff) == loss; inf when the loss is at or below what N can reach at all."""
    excess = loss - law.E - law.A / N**law.alpha
    return float("inf") if excess <= 0 else (law.B / excess) ** (1 / law.beta)


def transferred_tokens(law: ParametricLaw, N: float, mlm_tokens: float, loss_from_clm: float) -> float:
    return effective_tokens(law, N, loss_from_clm) - mlm_tokens


def optimal_clm_share(shares, losses) -> float:
    """Argmin of a parabola through (share, loss) of equal-compute runs, clipped to the tried range."""
    shares, losses = np.asarray(shares, float), np.asarray(losses, float)
    if len(shares) < 3:
        return float(shares[np.argmin(losses)])
    c2, c1, _ = np.polyfit(shares, losses, 2)
    if c2 <= 0:
        return float(shares[np.argmin(losses)])
    return float(np.clip(-c1 / (2 * c2), shares.min(), shares.max()))
