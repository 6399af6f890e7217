"""The scale table: how long a sequence each model trains on each TPU v5p slice.

Every cell is compiled ahead of time for the slice with ``lcm.compile`` (libtpu's compile-only
client; nothing runs), so its HBM figure is XLA's own. A cell is (model, slice, sequence length
L); its plan starts from a global batch of ``--tokens`` tokens (``B = tokens / L`` sequences,
between 1 and the chip count), puts one sequence per ``fsdp`` rank and spreads each sequence
over ``context = chips / B`` chips (ring attention with the Pallas kernels as its inner tiles;
the plain Pallas kernels when ``context`` is 1), with full remat. Parameters and Adam state are
sharded over all chips (``fsdp`` x ``context``). When a plan does not fit, the batch halves
(the same sequence on twice the chips) until it fits or ``B = 1`` does not. A cell "trains"
when it fits with at least 10% headroom.

    .venv/bin/python -m experiments.pod_scale.run            # the grid below, ~1 h on 2 cores
    .venv/bin/python -m experiments.pod_scale.run --from-results   # re-render md + png from json
    .venv/bin/python -m experiments.pod_scale.run --merge --slices v5p-512   # add or redo cells

A cell's config is ``experiments/pod_scale/configs.py:<model>,<L>,<B>,<chips>``. Writes
``experiments/pod_scale/results/pod_scale.{json,md,png}``. Slice names count chips, as the
issues do: 64 chips is topology 4x4x4 (Google's accelerator type v5p-128, which counts
TensorCores).
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host only compiles

import json
import pathlib
import sys
import time

from experiments import common
from experiments.common import markdown_table
from experiments.pod_scale import configs
from lcm.compile import aot

MODULE = "experiments.pod_scale.run"
MODELS = configs.MODELS
SLICES = {"v5p-64": ("v5p:4x4x4", 64), "v5p-256": ("v5p:4x8x8", 256), "v5p-512": ("v5p:8x8x8", 512)}
K = 1024
LENGTHS = (32 * K, 128 * K, 512 * K, K * K, 4 * K * K, 16 * K * K)
HEADROOM = 0.10
RESULTS = common.results_dir("pod_scale")
GIB = 2**30


def cell_config(model: str, seq_len: int, batch: int, chips: int):
    config = configs.get_config(f"{model},{seq_len},{batch},{chips}")
    config.lock()
    return config


def run_cell(model: str, slice_name: str, seq_len: int, tokens: int, log, commit="") -> dict:
    topology, chips = SLICES[slice_name]
    batch = max(1, min(chips, tokens // seq_len))
    tried = []
    while True:
        config = cell_config(model, seq_len, batch, chips)
        start = time.perf_counter()
        record = {"model": model, "slice": slice_name, "topology": topology, "seq_len": seq_len,
                  "batch": batch, "mesh": list(config.mesh.shape),
                  "attention": config.model.attention.impl,
                  "remat": config.model.remat_policy, "commit": commit}  # fmt: skip
        try:
            report = aot.compile_config(config, topology, eval_step=False)
        except aot.DoesNotFit as e:
            record.update(fits=False, error=str(e).splitlines()[0][:300])
        else:
            train = report["steps"]["train"]
            record.update(
                fits=train["hbm"]["fits"],
                hbm_gib=train["hbm"]["total"] / GIB,
                headroom=train["hbm"]["headroom"],
                model_tflop_per_step=report["model_flops_per_step"] / 1e12,
                roofline_floor_s=report["roofline_floor_s"],
                collective_gib_per_step={
                    k: v["bytes"] / GIB for k, v in train["collectives"].items() if v["ops"]
                },
                mosaic_kernels=train["mosaic_kernels"]["ops"],
            )
        record["compile_s"] = time.perf_counter() - start
        record["trains"] = bool(record["fits"] and record.get("headroom", -1) >= HEADROOM)
        log(json.dumps(record))
        tried.append(record)
        if record["trains"] or batch == 1:
            return {**record, "tried": tried[:-1]}
        batch //= 2


def merged(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` with ``new``'s cells added or replacing the same (model, slice, L), in grid order."""
    key = lambda c: (c["model"], c["slice"], c["seq_len"])  # noqa: E731
    cells = {key(c): c for c in old} | {key(c): c for c in new}
    order = lambda k: (list(MODELS).index(k[0]), list(SLICES).index(k[1]), k[2])  # noqa: E731
    return [cells[k] for k in sorted(cells, key=order)]


def _present(cells: list[dict], key: str, names) -> list[str]:
    return [n for n in names if any(c[key] == n for c in cells)]


def headline(cells: list[dict]) -> list[list]:
    rows = []
    for model in _present(cells, "model", MODELS):
        for slice_name in _present(cells, "slice", SLICES):
            ok = [c for c in cells if c["model"] == model and c["slice"] == slice_name]
            best = max((c for c in ok if c["trains"]), key=lambda c: c["seq_len"], default=None)
            text = "none" if best is None else f"{best['seq_len']:,}"
            if best is not None and best["seq_len"] == max(c["seq_len"] for c in ok):
                text = f">= {text} (the longest tried)"
            rows.append([model, slice_name, text])
    return rows


def render(data: dict, out: pathlib.Path = RESULTS) -> None:
    cells = data["cells"]
    rows = []
    for c in cells:
        coll = sum(c.get("collective_gib_per_step", {}).values())
        rows.append([
            c["model"], c["slice"], f"{c['seq_len']:,}", c["batch"],
            "x".join(map(str, c["mesh"])), f"{c['attention']}, remat {c['remat']}",
            c.get("commit", "")[:7],
            f"{c['hbm_gib']:.1f}" if "hbm_gib" in c else common.refused(c["error"]),
            ("yes" if c["trains"] else "fits, <10% free" if c["fits"] else "no"),
            f"{c['model_tflop_per_step']:,.0f}" if "model_tflop_per_step" in c else "",
            f"{c['roofline_floor_s']:.2f}" if "roofline_floor_s" in c else "",
            f"{coll:,.1f}" if coll else "",
        ])  # fmt: skip
    text = "\n\n".join([
        "# Pod scale: the longest sequence each model trains on each v5p slice",
        "Compiled ahead of time with `lcm.compile` for compile-only v5p devices (95 GiB HBM, "
        "459 TFLOP/s bf16 per chip); nothing ran. See `experiments/pod_scale/run.py` for the plan "
        "of each cell. \"trains\" = fits with at least 10% of HBM free.",
        "## Longest sequence that trains",
        markdown_table(["model", "slice", "longest L"], headline(cells)),
        "## Every cell (the plan that fit, or the last one tried)",
        markdown_table(
            ["model", "slice", "L", "B", "mesh (data x fsdp x context x tensor)", "attention",
             "commit", "HBM/chip GiB", "trains", "model TFLOP/step", "floor s/step",
             "collectives GiB/step"], rows),
        "## Provenance",
        common.provenance_markdown(data["provenance"]),
    ]) + "\n"  # fmt: skip
    (out / "pod_scale.md").write_text(text)
    plot(cells, out)


def plot(cells: list[dict], out: pathlib.Path) -> None:
    from matplotlib.figure import Figure

    slices = _present(cells, "slice", SLICES)
    fig = Figure(figsize=(4 * len(slices), 3.6))
    axes = fig.subplots(1, len(slices), sharey=True, squeeze=False)[0]
    for ax, slice_name in zip(axes, slices, strict=True):
        for model in _present(cells, "model", MODELS):
            here = [c for c in cells if (c["model"], c["slice"]) == (model, slice_name)]
            pts = [(c["seq_len"], c["hbm_gib"]) for c in here if "hbm_gib" in c]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=model)
        ax.axhline(95, color="k", lw=0.8, ls="--", label="HBM per chip")
        ax.set_xscale("log", base=2)
        ax.set_title(slice_name)
        ax.set_xlabel("sequence length (tokens)")
    axes[0].set_ylabel("HBM per chip (GiB), plan that fit")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "pod_scale.png", dpi=120)


def main(argv) -> None:
    parser = common.study_parser(__doc__.splitlines()[0], "pod_scale")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--slices", default=",".join(SLICES))
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    parser.add_argument("--tokens", type=int, default=4 * K * K, help="global tokens per step")
    parser.add_argument("--merge", action="store_true", help="add to the committed cells")
    args = parser.parse_args(argv)
    out = args.out / "pod_scale.json"
    if args.from_results:
        render(common.read_json(out), args.out)
        return
    prov = common.Provenance(MODULE, argv)
    old = common.read_json(out) if args.merge else {"cells": [], "provenance": ""}

    def save(cells, provenance):  # after every cell, so an interrupted run keeps what it did
        if args.merge:
            provenance = f"{old['provenance']}\n\nMerged in:\n\n{provenance}"
        data = {"cells": merged(old["cells"], cells), "provenance": provenance}
        common.write_json(out, data)
        return data

    cells = []
    for model in args.models.split(","):
        for slice_name in args.slices.split(","):
            for seq_len in map(int, args.lengths.split(",")):
                cell = run_cell(model, slice_name, seq_len, args.tokens, print, prov.commit)
                cells.append(cell)
                save(cells, f"- Interrupted run: `{prov.command}`, {len(cells)} cells so far")
                if not cell["trains"]:
                    break  # longer sequences need even more memory per chip
    render(save(cells, prov.markdown()), args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
