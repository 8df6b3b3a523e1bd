"""The one plot of the evaluations: a score per KV policy against the budget (log2 axis), as PNG."""
from __future__ import annotations

from pathlib import Path


def plot_by_budget(curves: dict[str, list[tuple[float, float]]], path: Path, *, title: str, ylabel: str,
                   full_cache: float | None = None, highlight: str | None = None) -> None:
    """curves: policy -> [(budget as a fraction of the prompt, score)], drawn in that order;
    full_cache: a dashed line at the full cache's score; highlight: the policy drawn thicker."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in curves.items():
        width = {} if highlight is None else {"lw": 2.5 if name == highlight else 1.2}
        ax.plot([b for b, _ in pts], [s for _, s in pts], marker="o", label=name, **width)
    if full_cache is not None:
        ax.axhline(full_cache, color="grey", ls="--", lw=0.8, label="full cache")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("KV budget (fraction of the prompt)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
