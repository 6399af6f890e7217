"""Activation memory of the million-token step: remat policies and attention block sizes.

Llama-3-8B's shape at 1,048,576 tokens per sequence, batch 4, on a 64-chip v5p slice (mesh
fsdp 4 x context 16, ring attention with Pallas tiles, bf16 compute), compiled ahead of time
with ``lcm.compile`` (nothing runs). Each variant changes one thing: the remat policy
(``config.model.remat_policy``) at the default 512 x 512 attention blocks, or the blocks under
``full`` and ``save_attention``. Per variant: XLA's HBM per chip, the Mosaic kernel calls one
step executes (fewer = the attention forward is not rerun in the backward pass) and the K/V
collective-permutes.

    .venv/bin/python -m experiments.activation_memory.run            # ~10 min on 2 cores
    .venv/bin/python -m experiments.activation_memory.run --from-results

A variant's config is ``experiments/activation_memory/configs.py:<policy>,<block>``. Writes
``experiments/activation_memory/results/activation_memory.{json,md,png}``.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host only compiles

import json
import pathlib
import sys
import time

from experiments import common
from experiments.activation_memory import configs
from experiments.common import markdown_table
from lcm.compile import aot

MODULE = "experiments.activation_memory.run"
TOPOLOGY = "v5p:4x4x4"
SEQ_LEN, BATCH, MESH = configs.SEQ_LEN, configs.BATCH, configs.MESH
POLICIES = ("full", "save_attention", "offload_attention", "dots_with_no_batch_dims_saveable")
BLOCKS = (256, 1024, 2048)  # besides the default 512, under full and save_attention
RESULTS = common.results_dir("activation_memory")
GIB = 2**30


def variants() -> list[tuple[str, int]]:
    return [(p, 512) for p in POLICIES] + [
        (p, b) for p in ("full", "save_attention") for b in BLOCKS
    ]


def run_variant(policy: str, block: int) -> dict:
    config = configs.get_config(f"{policy},{block}")
    config.lock()
    record = {"policy": policy, "block": block}
    start = time.perf_counter()
    try:
        report = aot.compile_config(config, TOPOLOGY, eval_step=False)
    except aot.DoesNotFit as e:
        record.update(fits=False, error=str(e).splitlines()[0][:300])
    else:
        train = report["steps"]["train"]
        hbm = train["hbm"]
        permute = train["collectives"]["collective-permute"]
        record.update(
            fits=hbm["fits"],
            headroom=hbm["headroom"],
            **{f"{k}_gib": hbm[k] / GIB for k in ("total", "arguments", "temporaries")},
            mosaic_executed=train["mosaic_kernels"]["executed"],
            permutes_executed=permute["executed"],
            permute_gib=permute["bytes"] / GIB,
        )
    record["compile_s"] = time.perf_counter() - start
    return record


def render(data: dict, out: pathlib.Path = RESULTS) -> None:
    cells = data["cells"]
    full = next(c for c in cells if (c["policy"], c["block"]) == ("full", 512))
    rows = []
    for c in cells:
        if "total_gib" not in c:
            rows.append([c["policy"], c["block"], common.refused(c["error"]), "", "", "no", "", ""])
            continue
        rows.append([
            c["policy"], c["block"], f"{c['total_gib']:.1f}", f"{c['temporaries_gib']:.1f}",
            f"{100 * c['headroom']:.0f}%", "yes" if c["headroom"] >= 0.10 else "no",
            f"{c['mosaic_executed']:,} ({c['mosaic_executed'] / full['mosaic_executed']:.2f}x)",
            f"{c['permutes_executed']:,} ({c['permute_gib']:,.0f} GiB)",
        ])  # fmt: skip
    text = "\n\n".join([
        "# Activation memory of the million-token step",
        f"Llama-3-8B shape, {SEQ_LEN:,} tokens x batch {BATCH}, v5p 64 chips (95 GiB HBM "
        f"each), mesh data x fsdp x context x tensor = {'x'.join(map(str, MESH))}, ring "
        "attention with Pallas tiles, compiled ahead of time by `lcm.compile` "
        "(`experiments/activation_memory/run.py`). \"10% free\" is the bar the scale table uses. "
        "Mosaic calls are the attention kernels one step executes (x: relative to `full` at "
        "512); the fewer, the less attention is recomputed.",
        markdown_table(
            ["remat policy", "block q = kv", "HBM/chip GiB", "temporaries GiB", "free",
             "10% free", "Mosaic calls / step", "K/V permutes / step"], rows),
        "## Provenance",
        common.provenance_markdown(data["provenance"]),
    ]) + "\n"  # fmt: skip
    (out / "activation_memory.md").write_text(text)
    plot(cells, out)


def plot(cells: list[dict], out: pathlib.Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 3.6))
    ax = fig.subplots()
    labels = [f"{c['policy']}\n{c['block']}" for c in cells]
    totals = [c.get("total_gib", 0.0) for c in cells]
    colors = ["tab:blue" if c.get("fits") else "tab:red" for c in cells]
    ax.bar(range(len(cells)), totals, color=colors)
    for i, c in enumerate(cells):
        if "total_gib" not in c:
            ax.text(i, 2, "does not fit", rotation=90, ha="center", va="bottom", fontsize=7)
    ax.axhline(95, color="k", lw=0.8, ls="--", label="HBM per chip")
    ax.axhline(95 * 0.9, color="gray", lw=0.8, ls=":", label="10% free")
    ax.set_xticks(range(len(cells)), labels, fontsize=6, rotation=45, ha="right")
    ax.set_ylabel("HBM per chip (GiB)")
    ax.set_title("Llama-3-8B, 1M tokens, v5p 64 chips: remat policy / attention block")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "activation_memory.png", dpi=120)


def main(argv) -> None:
    parser = common.study_parser(__doc__.splitlines()[0], "activation_memory")
    args = parser.parse_args(argv)
    out = args.out / "activation_memory.json"
    if args.from_results:
        render(common.read_json(out), args.out)
        return
    prov = common.Provenance(MODULE, argv)
    cells = []
    for i, (policy, block) in enumerate(variants()):
        cells.append(run_variant(policy, block))
        print(f"[{i + 1}/{len(variants())}] {json.dumps(cells[-1])}", flush=True)
    data = {"cells": cells, "provenance": prov.finish()}
    common.write_json(out, data)
    render(data, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
