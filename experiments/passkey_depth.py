"""Passkey retrieval by needle depth and context length, per positional scheme (heatmaps).

    .venv/bin/python experiments/passkey_depth.py            # default: 2-core CPU
    .venv/bin/python experiments/passkey_depth.py --full     # larger, for an accelerator
    .venv/bin/python experiments/passkey_depth.py --toy      # tiny sizes; the smoke test

For each scheme of ``length_extrapolation.py`` (``configs/experiments/positional_schemes.py``:
RoPE, NoPE, ALiBi, RNoPE-SWA, TAPA at L = 256, same size, seed and steps) a retrieval model is
trained (``small_runs.retrieval_train``): every row a fresh passkey document (Mohtashami &
Jaggi 2023, arXiv:2305.16300; ``lcm.data.synthetic``), the loss on the answer alone
(``config.data.synthetic_loss = "answer"``). It is scored on passkey at lengths L .. 8L and
needle depths 0 .. 100 %: greedy decoding, exact match of the key, and the teacher-forced NLL
of the answer. (The language models of ``length_extrapolation.py``, a quarter of whose rows are
passkey documents under the full-context loss, scored 0 % in every cell after 120 steps: the 7
answer bytes of a row are swamped by its ~250 easy filler bytes.)

At 256 bytes the passkey prompt has room for almost no filler (the template alone is about 250
bytes), so training teaches copying a key from about 60-100 bytes back; longer contexts test
whether that retrieval survives more distance, at every depth, and unseen positions.

Writes ``experiments/results/passkey_depth.md`` and ``passkey_depth.png``.
"""

from __future__ import annotations

import pathlib
import sys

import length_extrapolation
import matplotlib
import numpy as np
import small_runs

matplotlib.use("Agg")
import matplotlib.pyplot as plt

NAME = "passkey_depth"
SCHEMES = length_extrapolation.SCHEMES
TUNE = {  # per setting: the retrieval training (steps, rows per batch)
    "toy": {"steps": 2, "data.batch_size": 2, "seq_len": 256},  # passkey needs ~250 bytes
    "default": {"steps": 600, "data.batch_size": 16},
    "full": {"steps": 2000, "data.batch_size": 32},
}
EVAL = {  # per setting: the passkey grid
    "toy": {"eval.lengths": (256,), "eval.depths": (0.0, 1.0), "eval.samples_per_cell": 1},
    "default": {
        "eval.lengths": (256, 512, 1024, 2048),
        "eval.depths": (0.0, 0.25, 0.5, 0.75, 1.0),
        "eval.samples_per_cell": 2,
    },
    "full": {
        "eval.lengths": (512, 1024, 2048, 4096, 8192),
        "eval.depths": (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
        "eval.samples_per_cell": 10,
    },
}


def _grid(record: dict, key: str) -> np.ndarray:
    """``[depth, length]`` of ``key`` (score or target_nll); nan where the prompt did not fit."""
    depths, lengths = record["depths"], record["lengths"]
    grid = np.full((len(depths), len(lengths)), np.nan)
    for cell in record["cells"]:
        if cell.get(key) is not None:
            grid[depths.index(cell["depth"]), lengths.index(cell["length"])] = cell[key]
    return grid


def _plot(records: dict, path: pathlib.Path) -> None:
    n = len(records)
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n + 1, 6), squeeze=False)
    for col, (scheme, record) in enumerate(records.items()):
        for row, (key, cmap, vmax, label) in enumerate(
            [("score", "RdYlGn", 100, "exact match (%)"), ("target_nll", "RdYlGn_r", 3, "NLL")]
        ):
            ax = axes[row][col]
            grid = np.ma.masked_invalid(_grid(record, key))
            colors = matplotlib.colormaps[cmap].with_extremes(bad="lightgrey")
            image = ax.imshow(grid, cmap=colors, vmin=0, vmax=vmax, aspect="auto")
            ax.set_xticks(range(len(record["lengths"])), record["lengths"], fontsize=7)
            ax.set_yticks(range(len(record["depths"])), [f"{100 * d:g}%" for d in record["depths"]])
            ax.set_title(f"{scheme}: {label}", fontsize=9)
            if col == 0:
                ax.set_ylabel("needle depth")
            if row == 1:
                ax.set_xlabel("context length")
            if col == n - 1:
                fig.colorbar(image, ax=ax)
    fig.suptitle("passkey: greedy exact match (top) and answer NLL per byte (bottom)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _tables(records: dict) -> list[str]:
    lengths = next(iter(records.values()))["lengths"]
    rows, nll_rows = [], []
    for scheme, record in records.items():
        score, nll = _grid(record, "score"), _grid(record, "target_nll")
        rows.append([scheme, *[_mean(score[:, j]) for j in range(len(lengths))]])
        nll_rows.append([scheme, *[_mean(nll[:, j]) for j in range(len(lengths))]])
    header = ["scheme", *[str(n) for n in lengths]]
    out = [
        "Exact match (%, mean over depths):",
        "",
        small_runs.markdown_table(header, rows),
        "",
        "Answer NLL (nats per byte of ` <key>`, teacher-forced, mean over depths; a uniform "
        "guess among the 10 digits scores ln 10 = 2.30 per digit):",
        "",
        small_runs.markdown_table(header, nll_rows),
        "",
        "Per depth (exact match %, rows = depth, columns = length):",
        "",
    ]
    for scheme, record in records.items():
        score = _grid(record, "score")
        depth_rows = [
            [f"{100 * d:g}%", *[_mean(score[i, j : j + 1]) for j in range(len(lengths))]]
            for i, d in enumerate(record["depths"])
        ]
        out += [f"**{scheme}**", "", small_runs.markdown_table(["depth", *header[1:]], depth_rows)]
        out.append("")
    return out


def _mean(values: np.ndarray) -> object:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else "-"


def run(args) -> pathlib.Path:
    log = small_runs.logger(args.quiet)
    provenance = small_runs.Provenance(args.argv)
    work, out = pathlib.Path(args.workdir), pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = {}
    tune = dict(TUNE[args.setting])
    steps = tune.pop("steps")
    for scheme in SCHEMES:
        config = small_runs.override(length_extrapolation.scheme_config(scheme, args.setting), tune)
        workdir = work / f"{scheme}_passkey"
        small_runs.retrieval_train(config, workdir, steps=steps, tasks=("passkey",), log=log)
        grid = small_runs.override(config, {**EVAL[args.setting], "eval.tasks": ("passkey",)})
        results = small_runs.evaluate(grid, workdir, f"{scheme}-passkey", log=log)
        records[scheme] = results["tasks"]["passkey"]
    png = out / f"{NAME}.png"
    _plot(records, png)
    c = length_extrapolation.scheme_config("rope", args.setting)
    e = EVAL[args.setting]
    text = "\n".join(
        [
            "# Passkey retrieval: needle depth x context length, per positional scheme",
            "",
            f"Produced by `experiments/passkey_depth.py` (setting: `{args.setting}`); numbers "
            "below are this run's, unedited.",
            "",
            "## Setup",
            "",
            f"- Models: one per scheme, the architecture of `length_extrapolation.md` "
            f"({c.model.num_layers} layers, d_model {c.model.d_model}, "
            "`configs/experiments/positional_schemes.py:<scheme>`), trained from scratch at "
            f"L = {c.seq_len} on retrieval alone (`small_runs.retrieval_train`): {steps} steps "
            f"of {tune['data.batch_size']} x {c.seq_len} bytes, every row a fresh passkey "
            "document (seed `data.split_seed`), loss on the answer ` <key>\\n` alone "
            f'(`config.data.synthetic_loss = "answer"`), peak lr {c.train.learning_rate:g}, '
            "warmup 10 %, cosine, seed 0.",
            f"- Task: `passkey` (`lcm.data.synthetic`), lengths {list(e['eval.lengths'])}, depths"
            f" {[f'{100 * d:g}%' for d in e['eval.depths']]}, {e['eval.samples_per_cell']} "
            "samples per cell, eval seed 0 (different keys and depths from the training "
            "documents); greedy cached decoding (`lcm.inference.generate`, stop at newline) scored "
            "by exact match of the key, plus "
            "the teacher-forced NLL of the answer.",
            "- At L = 256 the prompt holds only a few filler bytes, so the training documents "
            "teach copying the key from about 60-100 bytes back; longer lengths put the key up "
            "to 8L away, at positions the models never saw.",
            "",
            "## Results",
            "",
            *_tables(records),
            f"![passkey heatmaps]({png.name})",
            "",
            "## Provenance",
            "",
            provenance.markdown(),
            "",
        ]
    )
    return small_runs.write_report(out, work, NAME, text, records, log)


def parse(argv: list[str]):
    return small_runs.parse_args(
        argv,
        __doc__.split("\n")[0],
        models="positional",
        full_help="larger models, for an accelerator",
    )


if __name__ == "__main__":
    run(parse(sys.argv))
