"""PNG plots of a fit: IsoFLOP curves with their minima, and the N_opt(C) frontier with its band."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from megatron_plm.scaling.fit import Runs, fit_isoflop


def plot_isoflop(runs: Runs, result: dict, path: str | Path, *, paper_a: float | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    budgets = sorted({float(f"{c:.2g}") for c in runs.C})
    colours = dict(zip(budgets, plt.cm.viridis(np.linspace(0.1, 0.9, len(budgets)))))
    for budget in budgets:
        near = np.abs(runs.C / budget - 1) <= 0.05
        order = np.argsort(runs.N[near])
        left.plot(
            runs.N[near][order], runs.loss[near][order], "o-", lw=0.8, color=colours[budget], label=f"C = {budget:.2g}"
        )
    left.set(xscale="log", xlabel="non-embedding parameters N", ylabel="validation loss", title="IsoFLOP profiles")
    try:
        iso = fit_isoflop(runs)
    except ValueError as error:
        left.legend(fontsize=8)
        right.text(0.5, 0.5, f"no compute-optimal frontier:\n{error}", ha="center", va="center", wrap=True, fontsize=9)
        right.set_axis_off()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return Path(path)
    for budget, parabola, n_opt, loss_opt in zip(iso.budgets, iso.parabolas, iso.n_opt, iso.loss_opt):
        near = np.abs(runs.C / budget - 1) <= 0.05
        x = np.linspace(np.log(runs.N[near].min()), np.log(runs.N[near].max()), 100)
        colour = colours[float(f"{budget:.2g}")]
        left.plot(np.exp(x), np.polyval(parabola, x), color=colour, lw=1.5)
        left.scatter([n_opt], [loss_opt], color=colour, marker="*", s=160, edgecolor="black", zorder=3)
    left.legend(fontsize=8)
    c = np.logspace(np.log10(iso.budgets.min()) - 0.3, np.log10(iso.budgets.max()) + 0.3, 50)
    right.scatter(iso.budgets, iso.n_opt, color="black", zorder=3, label="per-budget minimum")
    right.plot(c, iso.law.kN * c**iso.law.a, color="C0", label=f"fit: a = {iso.law.a:.3f}")
    low, high = result["intervals"].get("a", (None, None))
    if low is not None:
        anchor = np.exp(np.mean(np.log(iso.n_opt)))
        centre = np.exp(np.mean(np.log(iso.budgets)))
        right.fill_between(
            c,
            anchor * (c / centre) ** low,
            anchor * (c / centre) ** high,
            color="C0",
            alpha=0.2,
            label=f"95% band [{low:.3f}, {high:.3f}]",
        )
    if paper_a is not None:
        anchor = np.exp(np.mean(np.log(iso.n_opt)))
        centre = np.exp(np.mean(np.log(iso.budgets)))
        right.plot(c, anchor * (c / centre) ** paper_a, color="C3", ls="--", label=f"paper's exponent {paper_a}")
    right.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel="N_opt", title="Compute-optimal size")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
