"""Scaling-law forms, compute-optimal allocation, and the reference study's published fits.

C = 6 N D throughout (N non-embedding parameters, D tokens), as the study and Megatron count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ParametricLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta (Chinchilla's approach 3)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, N, D):
        return self.E + self.A / N**self.alpha + self.B / D**self.beta

    @property
    def a(self) -> float:
        """N_opt grows as C^a."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """D_opt grows as C^b."""
        return self.alpha / (self.alpha + self.beta)

    def optimal(self, flops: float) -> tuple[float, float]:
        """(N_opt, D_opt) minimising L at C = 6 N D."""
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        n = g * (flops / 6) ** self.a
        return n, flops / (6 * n)


@dataclass(frozen=True)
class AllocationLaw:
    """N_opt = kN C^a, D_opt = kD C^b (an IsoFLOP fit; approach 2)."""

    kN: float
    a: float
    kD: float
    b: float

    def optimal(self, flops: float) -> tuple[float, float]:
        return self.kN * flops**self.a, self.kD * flops**self.b


# From shared/notes/paper-facts.md: the authors' example-notebook allocation fits and their "Table A9"
# parametric fits (whose individual coefficients their own re-analysis finds poorly determined).
PAPER = {
    "clm": {
        "allocation": AllocationLaw(kN=3.09e-3, a=0.557, kD=130.2, b=0.426),
        "parametric": ParametricLaw(E=2.123, A=143.9, B=22036.5, alpha=0.367, beta=0.496),
    },
    "mlm": {
        "allocation": AllocationLaw(kN=1.365e-7, a=0.760, kD=6.149e5, b=0.256),
        "parametric": ParametricLaw(E=0.0, A=3.365, B=7.569, alpha=0.042, beta=0.099),
    },
}


def load_law(source: str, objective: str):
    """``paper`` (the study's allocation fit for the objective) or a JSON file written by ``scaling fit``."""
    if source == "paper":
        return PAPER[objective]["allocation"]
    from megatron_plm.safe_io import read_json, reading

    fix = "give a file written by `megatron-plm scaling fit`, or --law paper"
    data = read_json(source, fix=fix)
    with reading(source, fix):
        if all(k in data for k in ("kN", "a", "kD", "b")) and data.get("kN") is not None:
            law = AllocationLaw(kN=data["kN"], a=data["a"], kD=data["kD"], b=data["b"])
        else:
            law = ParametricLaw(**{k: data[k] for k in ("E", "A", "B", "alpha", "beta")})
        values = list(vars(law).values())
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise ValueError(f"the law's coefficients must be finite numbers, got {vars(law)}")
        return law
