"""PNG files are produced and non-empty."""

from lcm.eval import plots

PNG = b"\x89PNG\r\n\x1a\n"


def test_perplexity_plot_and_heatmap(tmp_path):
    runs = [
        {
            "label": label,
            "perplexity": {
                "protocol": "truncate",
                "results": [{"length": n, "perplexity": p * n**0.1} for n in (64, 128, 256)],
            },
        }
        for label, p in (("rope", 3.0), ("rope+yarn4", 2.5))
    ]
    path = plots.perplexity_plot(runs, tmp_path / "ppl.png")
    record = {
        "lengths": [64, 128],
        "depths": [0.0, 0.5, 1.0],
        "cells": [
            {"length": n, "depth": d, "score": None if n == 64 else 100 * d}
            for n in (64, 128)
            for d in (0.0, 0.5, 1.0)
        ],
    }
    heat = plots.heatmap("passkey", record, tmp_path / "heat.png")
    for p in (path, heat):
        data = p.read_bytes()
        assert data.startswith(PNG) and len(data) > 2000
