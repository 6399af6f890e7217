"""PNG plots of evaluation results (matplotlib ``Figure`` objects: no pyplot, no display).

Figures are built without pyplot, so importing this module never changes the matplotlib backend
of the caller (e.g. inline plots in a notebook).

- ``perplexity_plot``: perplexity vs length, one line per run (``results.json``), log-log axes,
  legend ``label (protocol)``.
- ``heatmap``: a depth x length grid for one task (x length, y depth with 0 at the top, colour
  the 0-100 score, grey where the cell was skipped), as in gkamradt's NIAH figures.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure


def perplexity_plot(runs: Sequence[dict], path: str | pathlib.Path) -> pathlib.Path:
    """Draws each run's ``perplexity.results`` on one figure; returns ``path``."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for run in runs:
        ppl = run["perplexity"]
        xs = [r["length"] for r in ppl["results"]]
        ys = [r["perplexity"] for r in ppl["results"]]
        ax.plot(xs, ys, marker="o", label=f"{run['label']} ({ppl['protocol']})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel("perplexity")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return pathlib.Path(path)


def heatmap(task: str, record: dict, path: str | pathlib.Path, *, title: str = "") -> pathlib.Path:
    """Draws ``record["cells"]`` (from ``lcm.eval.tasks.run_task``) as depth x length."""
    lengths, depths = record["lengths"], record["depths"]
    grid = np.full((len(depths), len(lengths)), np.nan)
    for cell in record["cells"]:
        if cell["score"] is not None:
            grid[depths.index(cell["depth"]), lengths.index(cell["length"])] = cell["score"]
    fig = Figure(figsize=(1.2 + 0.8 * len(lengths), 1.2 + 0.5 * len(depths)))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), ["-" if d is None else f"{100 * d:g}%" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(title or task, fontsize=9)
    fig.colorbar(image, ax=ax, label="score")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return pathlib.Path(path)
