"""Passkey retrieval by needle depth and context length, per positional scheme (heatmaps).

    .venv/bin/python -m experiments.passkey_depth.run            # default: 2-core CPU
    .venv/bin/python -m experiments.passkey_depth.run --full     # larger, for an accelerator
    .venv/bin/python -m experiments.passkey_depth.run --toy      # tiny sizes; the smoke test
    .venv/bin/python -m experiments.passkey_depth.run --from-results  # re-render md + png

For each scheme of ``experiments.length_extrapolation`` (RoPE, NoPE, ALiBi, RNoPE-SWA, TAPA at
L = 256, same size, seed and steps) a retrieval model is trained
(``experiments/passkey_depth/configs.py``, ``common.retrieval_train``): every row a fresh
passkey document (Mohtashami & Jaggi 2023, arXiv:2305.16300; ``lcm.data.synthetic``), the loss
on the answer alone (``config.data.synthetic_loss = "answer"``). It is scored on passkey at
lengths L .. 8L and needle depths 0 .. 100 %: greedy decoding, exact match of the key, and the
teacher-forced NLL of the answer. (The language models of ``length_extrapolation``, a quarter
of whose rows are passkey documents under the full-context loss, scored 0 % in every cell after
120 steps: the 7 answer bytes of a row are swamped by its ~250 easy filler bytes.)

At 256 bytes the passkey prompt has room for almost no filler (the template alone is about 250
bytes), so training teaches copying a key from about 60-100 bytes back; longer contexts test
whether that retrieval survives more distance, at every depth, and unseen positions.

Writes ``experiments/passkey_depth/results/passkey_depth.{json,md,png}`` (the JSON: every
passkey cell and the provenance, from which ``--from-results`` re-renders the rest).
"""

from __future__ import annotations

import pathlib
import sys

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from experiments import common
from experiments.length_extrapolation import configs as positional
from experiments.passkey_depth import configs

MODULE = "experiments.passkey_depth.run"
NAME = "passkey_depth"
SCHEMES = positional.SCHEMES


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
        common.markdown_table(header, rows),
        "",
        "Answer NLL (nats per byte of ` <key>`, teacher-forced, mean over depths; a uniform "
        "guess among the 10 digits scores ln 10 = 2.30 per digit):",
        "",
        common.markdown_table(header, nll_rows),
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
        out += [f"**{scheme}**", "", common.markdown_table(["depth", *header[1:]], depth_rows)]
        out.append("")
    return out


def _mean(values: np.ndarray) -> object:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else "-"


def run(args) -> pathlib.Path:
    """Trains and scores every retrieval model, writes the raw results, renders; returns the md."""
    log = common.logger(args.quiet)
    provenance = common.Provenance(MODULE, args.argv)
    work, out = pathlib.Path(args.workdir), pathlib.Path(args.out)
    records = {}
    steps = configs.STEPS[args.setting]
    for scheme in SCHEMES:
        config = configs.get_config(f"{scheme},{args.setting}")
        workdir = work / f"{scheme}_passkey"
        common.retrieval_train(config, workdir, steps=steps, tasks=("passkey",), log=log)
        results = common.evaluate(config, workdir, f"{scheme}-passkey", log=log)
        records[scheme] = results["tasks"]["passkey"]
    out.mkdir(parents=True, exist_ok=True)
    data = {"setting": args.setting, "records": records, "provenance": provenance.finish()}
    common.write_json(out / f"{NAME}.json", data)
    md = render(common.read_json(out / f"{NAME}.json"), out)
    log(md.read_text())
    return md


def render(data: dict, out: pathlib.Path) -> pathlib.Path:
    """``<out>/passkey_depth.{md,png}`` from the raw results; returns the md path."""
    setting, records = data["setting"], data["records"]
    steps, tune = configs.STEPS[setting], configs.TUNE[setting]
    png = out / f"{NAME}.png"
    _plot(records, png)
    c = positional.get_config(f"rope,{setting}")
    e = configs.EVAL[setting]
    text = "\n".join(
        [
            "# Passkey retrieval: needle depth x context length, per positional scheme",
            "",
            "Produced by `python -m experiments.passkey_depth.run` (setting: "
            f"`{setting}`); numbers below are this run's, unedited.",
            "",
            "## Setup",
            "",
            f"- Models: one per scheme, the architecture of `length_extrapolation.md` "
            f"({c.model.num_layers} layers, d_model {c.model.d_model}, "
            "`experiments/passkey_depth/configs.py:<scheme>`), trained from scratch at "
            f"L = {c.seq_len} on retrieval alone (`common.retrieval_train`): {steps} steps "
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
            common.provenance_markdown(data["provenance"]),
            "",
        ]
    )
    md = out / f"{NAME}.md"
    md.write_text(text)
    return md


def parse(argv: list[str]):
    return common.parse_args(
        argv,
        __doc__.split("\n")[0],
        study=NAME,
        models="positional",
        full_help="larger models, for an accelerator",
    )


def main(argv: list[str]) -> pathlib.Path:
    args = parse(argv)
    if args.from_results:
        return render(common.read_json(args.out / f"{NAME}.json"), args.out)
    return run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
