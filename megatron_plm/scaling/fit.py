"""Fitting scaling laws to a runs table, with bootstrap intervals.

- Approach 3 (parametric): minimise the Huber loss between log L and
  log(exp(e) + exp(a - alpha log N) + exp(b - beta log D)) from a grid of initialisations (L-BFGS),
  keeping the best and counting how many initialisations reached it.
- Approach 2 (IsoFLOP): per compute budget, a parabola of loss against log N and its minimum; then
  log N_opt and log D_opt = log(C / 6 N_opt) linear in log C.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from threadpoolctl import threadpool_limits

from megatron_plm.scaling.laws import AllocationLaw, ParametricLaw


@dataclass(kw_only=True)
class FitConfig:
    """``megatron-plm scaling fit``."""

    runs: str = field(metadata={"cli": {"positional": True}})
    """Runs table, CSV with N, D, loss ('scaling collect' writes one)."""
    json: bool = False
    """Print the fit as JSON instead of a table."""
    output: str | None = None
    """Write the fit as JSON (usable as plan --law)."""
    plot: str | None = None
    """Write IsoFLOP curves and the frontier as PNG."""
    bootstrap: int = 100
    """Bootstrap resamples for the intervals."""
    objective: Literal["clm", "mlm"] | None = None
    """The runs' objective: compare with the paper's law for it."""
    seed: int = 0
    """Seed of the bootstrap resamples."""


@dataclass
class Runs:
    N: np.ndarray
    D: np.ndarray
    loss: np.ndarray
    C: np.ndarray
    objective: list[str] = field(default_factory=list)

    @classmethod
    def read_csv(cls, path: str | os.PathLike, objective: str | None = None) -> "Runs":
        rows = list(csv.DictReader(open(path, newline="")))
        missing = {"N", "D", "loss"} - set(rows[0] if rows else {})
        if not rows or missing:
            raise ValueError(f"{path}: a runs table needs columns N, D, loss (missing {sorted(missing)})")
        if objective:
            rows = [r for r in rows if r.get("objective", objective) == objective]
        values = {}
        for key in ("N", "D", "loss"):
            try:
                values[key] = np.array([float(r[key]) for r in rows])
            except ValueError as error:
                raise ValueError(f"{path}: column {key} must be numeric ({error})") from None
        C = np.array([float(r["C"]) if r.get("C") else 6 * n * d for r, n, d in zip(rows, values["N"], values["D"])])
        return cls(values["N"], values["D"], values["loss"], C, [r.get("objective", "") for r in rows])

    def subset(self, index: np.ndarray) -> "Runs":
        return Runs(
            self.N[index],
            self.D[index],
            self.loss[index],
            self.C[index],
            [self.objective[i] for i in index] if self.objective else [],
        )


# ---- approach 3 ------------------------------------------------------------------------------------
def _huber(residual: np.ndarray, delta: float) -> np.ndarray:
    small = np.abs(residual) <= delta
    return np.where(small, 0.5 * residual**2, delta * (np.abs(residual) - 0.5 * delta))


def _objective(x: np.ndarray, logN, logD, logL, delta) -> float:
    a, b, e, alpha, beta = x
    predicted = np.logaddexp(np.logaddexp(a - alpha * logN, b - beta * logD), e)
    return float(_huber(predicted - logL, delta).sum())


DEFAULT_GRID = {
    "e": (-1.0, 0.0, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0),
    "b": (0.0, 5.0, 10.0, 15.0),
    "alpha": (0.2, 0.6),
    "beta": (0.2, 0.6),
}
"""192 initialisations (Chinchilla used a larger grid; on the laws we tested this one reaches the same best)."""


@dataclass
class ParametricFit:
    law: ParametricLaw
    objective: float
    initialisations: int
    reached_best: int


def fit_parametric(runs: Runs, *, delta: float = 1e-3, grid: dict | None = None, starts=None) -> ParametricFit:
    from scipy.optimize import minimize

    logN, logD, logL = np.log(runs.N), np.log(runs.D), np.log(runs.loss)
    grid = grid or DEFAULT_GRID
    if starts is None:
        starts = [
            np.array([a, b, e, al, be])
            for e, a, b, al, be in itertools.product(grid["e"], grid["a"], grid["b"], grid["alpha"], grid["beta"])
        ]
    bounds = [(None, None), (None, None), (None, None), (0.0, 3.0), (0.0, 3.0)]
    # The Huber objective is tiny (~1e-6) near a good fit: default relative tolerances would stop at once.
    options = {"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000}
    # One BLAS thread: on a 5-parameter problem, waking BLAS worker threads costs far more than the
    # arithmetic (measured: `scaling fit` 10-17x slower with OpenBLAS's default threads on 2 cores).
    with threadpool_limits(limits=1, user_api="blas"):
        results = [
            minimize(_objective, x0, args=(logN, logD, logL, delta), method="L-BFGS-B", bounds=bounds, options=options)
            for x0 in starts
        ]
    values = np.array([r.fun for r in results])
    best = results[int(values.argmin())]
    reached = int((values <= best.fun * (1 + 1e-3) + 1e-12).sum())
    a, b, e, alpha, beta = best.x
    return ParametricFit(
        ParametricLaw(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta),
        float(best.fun),
        len(starts),
        reached,
    )


# ---- approach 2 ------------------------------------------------------------------------------------
@dataclass
class IsoFlopFit:
    budgets: np.ndarray
    n_opt: np.ndarray
    loss_opt: np.ndarray
    parabolas: list[np.ndarray]
    """Per budget: coefficients of loss = c2 log(N)^2 + c1 log(N) + c0."""
    law: AllocationLaw


def fit_isoflop(runs: Runs, *, relative_tolerance: float = 0.05) -> IsoFlopFit:
    """Budgets are grouped by C within ``relative_tolerance``; each needs >= 3 sizes and a minimum."""
    order = np.argsort(runs.C)
    groups: list[list[int]] = []
    for i in order:
        if groups and abs(runs.C[i] / runs.C[groups[-1][0]] - 1) <= relative_tolerance:
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    budgets, n_opt, loss_opt, parabolas = [], [], [], []
    for group in groups:
        if len(np.unique(runs.N[group])) < 3:  # a parabola needs three distinct sizes
            continue
        x, y = np.log(runs.N[group]), runs.loss[group]
        c2, c1, c0 = np.polyfit(x, y, 2)
        best = -c1 / (2 * c2) if c2 > 0 else math.nan
        if not x.min() <= best <= x.max():
            continue  # the sizes tried at this budget do not bracket its optimum: no minimum to use
        budgets.append(float(np.mean(runs.C[group])))
        n_opt.append(math.exp(best))
        loss_opt.append(float(np.polyval([c2, c1, c0], best)))
        parabolas.append(np.array([c2, c1, c0]))
    if len(np.unique(np.round(np.log(budgets), 6))) < 2:
        raise ValueError(
            "IsoFLOP fit needs at least two budgets whose >= 3 sizes bracket a minimum (loss curving upward on "
            "both sides of it)"
        )
    budgets_arr, n_arr = np.array(budgets), np.array(n_opt)
    a, log_kn = np.polyfit(np.log(budgets_arr), np.log(n_arr), 1)
    d_arr = budgets_arr / (6 * n_arr)
    b, log_kd = np.polyfit(np.log(budgets_arr), np.log(d_arr), 1)
    if not all(np.isfinite([a, b, log_kn, log_kd])) or max(abs(log_kn), abs(log_kd)) > 700:
        raise ValueError("IsoFLOP fit is degenerate (non-finite allocation law)")
    return IsoFlopFit(
        budgets_arr,
        n_arr,
        np.array(loss_opt),
        parabolas,
        AllocationLaw(kN=math.exp(log_kn), a=a, kD=math.exp(log_kd), b=b),
    )


# ---- bootstrap ---------------------------------------------------------------------------------------
def bootstrap(runs: Runs, statistic, *, samples: int = 200, seed: int = 0, level: float = 0.95) -> dict[str, tuple]:
    """Percentile intervals of each value ``statistic(runs)`` returns (a dict), over resampled runs.
    Resamples where the statistic cannot be computed are skipped (and counted)."""
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    failed = 0
    for _ in range(samples):
        index = rng.integers(0, len(runs.N), len(runs.N))
        try:
            values = statistic(runs.subset(index))
        except (ValueError, OverflowError, np.linalg.LinAlgError, FloatingPointError):
            failed += 1
            continue
        for key, value in values.items():
            draws.setdefault(key, []).append(value)
    tail = (1 - level) / 2 * 100
    intervals = {k: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))) for k, v in draws.items()}
    intervals["_failed_resamples"] = (failed, samples)
    return intervals


def fit_all(runs: Runs, *, bootstrap_samples: int = 100, seed: int = 0, grid: dict | None = None) -> dict:
    """Both approaches with bootstrap intervals, as one JSON-ready dict (``scaling fit --json``)."""
    out: dict = {"runs": len(runs.N)}
    parametric = fit_parametric(runs, grid=grid)
    law = parametric.law
    out.update(
        {
            "E": law.E,
            "A": law.A,
            "B": law.B,
            "alpha": law.alpha,
            "beta": law.beta,
            "a_parametric": law.a,
            "b_parametric": law.b,
            "initialisations": parametric.initialisations,
            "reached_best": parametric.reached_best,
        }
    )
    best = np.array([math.log(law.A), math.log(law.B), math.log(max(law.E, 1e-12)), law.alpha, law.beta])

    def parametric_statistic(sample: Runs) -> dict:
        f = fit_parametric(sample, starts=[best]).law
        return {"E": f.E, "A": f.A, "B": f.B, "alpha": f.alpha, "beta": f.beta, "a_parametric": f.a}

    intervals = bootstrap(runs, parametric_statistic, samples=bootstrap_samples, seed=seed)
    try:
        iso = fit_isoflop(runs)
        out.update(
            {
                "a": iso.law.a,
                "b": iso.law.b,
                "kN": iso.law.kN,
                "kD": iso.law.kD,
                "isoflop_budgets": iso.budgets.tolist(),
                "isoflop_n_opt": iso.n_opt.tolist(),
            }
        )

        def isoflop_statistic(sample: Runs) -> dict:
            fitted = fit_isoflop(sample).law
            return {"a": fitted.a, "b": fitted.b}

        intervals.update(
            {
                k: v
                for k, v in bootstrap(runs, isoflop_statistic, samples=bootstrap_samples, seed=seed + 1).items()
                if k != "_failed_resamples"
            }
        )
    except ValueError as error:
        out.update({"a": None, "b": None, "kN": None, "kD": None, "isoflop_error": str(error)})
    out["intervals"] = {k: list(v) for k, v in intervals.items()}
    return out


def format_fit(result: dict) -> str:
    ci = result["intervals"]

    def show(key, fmt="{:.4g}"):
        value = result.get(key)
        if value is None:
            return f"{key:<13} -"
        interval = ci.get(key)
        band = f"  [{fmt.format(interval[0])}, {fmt.format(interval[1])}]" if interval else ""
        return f"{key:<13} {fmt.format(value)}{band}"

    lines = [
        f"runs: {result['runs']}; 95% bootstrap intervals in brackets",
        "parametric L(N, D) = E + A/N^alpha + B/D^beta (approach 3, Huber on log loss; "
        f"{result['reached_best']} of {result['initialisations']} initialisations reached the best):",
    ]
    lines += ["  " + show(k) for k in ("E", "A", "B", "alpha", "beta", "a_parametric")]
    at_bounds = [k for k in ("alpha", "beta") if result[k] <= 1e-6 or result[k] >= 3.0 - 1e-6]
    if at_bounds:
        lines.append(f"  {' and '.join(at_bounds)} at the search bound [0, 3]: these runs do not determine the law")
    lines.append("IsoFLOP profiles (approach 2): N_opt ~ C^a, D_opt ~ C^b")
    lines += ["  " + show(k) for k in ("a", "b")]
    if result.get("isoflop_error"):
        lines.append(f"  ({result['isoflop_error']})")
    return "\n".join(lines)
