"""Choosing a context-parallel strategy: ring, all_gather, ulysses and usp side by side.

Two parts. **Pod**: the real Llama-3-8B train step (``configs.py``: full remat, Pallas inner
tiles, contiguous layout) compiled ahead of time with ``lcm.compile`` for v5p-64 and v5p-256
at 32K, 128K and 1M tokens per sequence, one cell per strategy: HBM per chip, the bytes each
chip sends per step by collective kind (``lcm.compile.hlo.wire_bytes``; and how much of it the
schedule overlaps with compute), the roofline floor. Nothing runs. **CPU**: causal attention
fwd+bwd on 8 simulated devices (context = 8, B=1, N=8, K=8, H=64, float32, blockwise tiles of
128) per strategy: wall time (the devices share the host's cores, so this is total work, not a
device's time) and compiled bytes per device.

    .venv/bin/python -m experiments.context_parallel.run                 # both parts, ~40 min
    .venv/bin/python -m experiments.context_parallel.run --from-results  # re-render md + png
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host only compiles for the TPU cells
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import json
import pathlib
import sys
import time

from experiments import common
from experiments.context_parallel import configs

MODULE = "experiments.context_parallel.run"
NAME = "context_parallel"
STRATEGIES = ("ring", "all_gather", "ulysses", "usp")
SLICES = {"v5p-64": ("v5p:4x4x4", 64), "v5p-256": ("v5p:4x8x8", 256)}
K = 1024
# (slice, sequence length, batch): batch sequences, each over chips / batch context chips
CELLS = (
    ("v5p-64", 32 * K, 8), ("v5p-64", 128 * K, 4), ("v5p-64", K * K, 4),
    ("v5p-256", 32 * K, 32), ("v5p-256", 128 * K, 16), ("v5p-256", K * K, 4),
)  # fmt: skip
GIB = 2**30


def pod_cell(slice_name: str, seq_len: int, batch: int, impl: str, log) -> dict:
    from lcm import config as config_lib
    from lcm.compile import aot

    topology, chips = SLICES[slice_name]
    config = configs.get_config(f"{impl},{seq_len},{batch},{chips}")
    degree = config.model.attention.ulysses_degree
    record = {"slice": slice_name, "seq_len": seq_len, "batch": batch, "impl": impl,
              "context": chips // batch, "ulysses_degree": degree}  # fmt: skip
    start = time.perf_counter()
    try:
        config_lib.validate(config, num_devices=chips)
        report = aot.compile_config(config, topology, eval_step=False)
    except (ValueError, aot.DoesNotFit) as e:
        record.update(fits=False, error=str(e).splitlines()[-1].strip()[:300])
    else:
        train = report["steps"]["train"]
        record.update(
            fits=train["hbm"]["fits"],
            hbm_gib=train["hbm"]["total"] / GIB,
            roofline_floor_s=report["roofline_floor_s"],
            # bytes each chip sends, by kind; the part overlapped with compute; result bytes
            sent_gib=_gib(train["collectives"], "wire_bytes"),
            hidden_gib=_gib(train["overlapped"], "wire_bytes"),
            result_gib=_gib(train["collectives"], "bytes"),
        )
    record["compile_s"] = round(time.perf_counter() - start, 1)
    log(json.dumps(record))
    return record


def _gib(counts: dict, field: str) -> dict:
    return {k: v[field] / GIB for k, v in counts.items() if v["ops"]}


def cpu_cell(impl: str, seq_len: int, reps: int, log) -> dict:
    import jax
    import numpy as np

    from experiments.bench import timing
    from lcm import attention
    from lcm.parallel import mesh as mesh_lib
    from lcm.parallel import sharding

    mesh = mesh_lib.make_mesh(
        {"axes": mesh_lib.MESH_AXES, "shape": (1, 1, 8, 1), "axis_types": "auto"}
    )
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, seq_len, 8, 64), dtype=np.float32) for _ in range(3))
    pos = np.arange(seq_len, dtype=np.int32)[None]
    seg = np.ones_like(pos)
    options = {"degree": 2} if impl == "usp" else {}
    impl_ = attention.ATTENTION.get(impl)(layout="contiguous", block_q=128, block_kv=128, **options)

    def loss(q, k, v):
        out = attention.attend(q, k, v, mask=attention.Causal(), impl=impl_, q_pos=pos,
                               k_pos=pos, q_segment_ids=seg, kv_segment_ids=seg)  # fmt: skip
        return out.sum()

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    with sharding.use_mesh(mesh):
        m = grad.lower(q, k, v).compile().memory_analysis()
        seconds = timing.median_seconds(grad, (q, k, v), reps)
    record = {
        "impl": impl,
        "seq_len": seq_len,
        "fwd_bwd_s": seconds,
        "bytes_per_device": int(
            m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
        ),
        "load": round(os.getloadavg()[0], 2),
    }
    log(json.dumps(record))
    return record


def favours(cells: list[dict]) -> list[list]:
    """Per pod cell: the strategy with the lowest HBM among those that fit, and the one moving
    the fewest collective bytes not hidden behind compute."""
    rows = []
    for slice_name, seq_len, _ in CELLS:
        here = [c for c in cells if (c["slice"], c["seq_len"]) == (slice_name, seq_len)]
        fit = [c for c in here if c.get("fits")]
        if not fit:
            continue
        low_hbm = min(fit, key=lambda c: c["hbm_gib"])
        low_comm = min(fit, key=_exposed)
        rows.append([
            slice_name, f"{seq_len // K}K", f"{low_hbm['impl']} ({low_hbm['hbm_gib']:.1f})",
            f"{low_comm['impl']} ({_exposed(low_comm):.1f})",
        ])  # fmt: skip
    return rows


def _cell(pods: list[dict], slice_name: str, seq_len: int, impl: str) -> dict:
    match = (
        c for c in pods if (c["slice"], c["seq_len"], c["impl"]) == (slice_name, seq_len, impl)
    )
    return next(match, {})


def _exposed(c: dict) -> float:
    """GiB each chip sends per step that is not overlapped with compute."""
    return sum(c["sent_gib"].values()) - sum(c["hidden_gib"].values())


def _plot(data: dict, out: pathlib.Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pods, cpus = data["pod"], data["cpu"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    labels = [f"{s}\n{t // K}K" for s, t, _ in CELLS]
    for i, impl in enumerate(STRATEGIES):
        here = [_cell(pods, slice_name, t, impl) for slice_name, t, _ in CELLS]
        hbm = [c.get("hbm_gib", float("nan")) for c in here]
        coll = [sum(c.get("sent_gib", {}).values()) or float("nan") for c in here]
        x = [j + 0.2 * (i - 1.5) for j in range(len(CELLS))]
        axes[0].bar(x, hbm, 0.2, label=impl, color=f"C{i}")
        axes[1].bar(x, coll, 0.2, label=impl, color=f"C{i}")
        rows = [c for c in cpus if c["impl"] == impl]
        axes[2].plot([c["seq_len"] for c in rows], [c["fwd_bwd_s"] for c in rows], "o-",
                     label=impl, color=f"C{i}")  # fmt: skip
    axes[0].axhline(95, color="k", lw=0.8, ls="--")
    for ax, title in zip(axes[:2], ("HBM per chip (GiB)", "GiB sent per chip and step"),
                         strict=True):  # fmt: skip
        ax.set_xticks(range(len(CELLS)), labels, fontsize=7)
        ax.set_title(f"Llama-3-8B train step: {title}")
        ax.legend(fontsize=7)
    axes[1].set_yscale("log")
    axes[2].set(xscale="log", yscale="log", xlabel="T", ylabel="s (8 simulated devices)",
                title="causal fwd+bwd on CPU, context = 8")  # fmt: skip
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{NAME}.png", dpi=110)
    plt.close(fig)
    return f"{NAME}.png"


def render(data: dict, out: pathlib.Path) -> None:
    """``<out>/context_parallel.md`` and its plot from the raw results."""
    png = _plot(data, out)
    pod_rows = []
    for c in data["pod"]:
        coll = c.get("sent_gib", {})
        hidden = c.get("hidden_gib", {})
        pod_rows.append([
            c["slice"], f"{c['seq_len'] // K}K", c["batch"], c["context"],
            c["impl"] + (f" (Ulysses {c['ulysses_degree']})" if c["impl"] == "usp" else ""),
            f"{c['hbm_gib']:.1f}" if "hbm_gib" in c else common.refused(c["error"]),
            "yes" if c.get("fits") else "no",
            ", ".join(f"{k} {v:.1f}" + (f" ({hidden[k]:.1f} hidden)" if hidden.get(k) else "")
                      for k, v in coll.items()),
            f"{c['roofline_floor_s']:.2f}" if "roofline_floor_s" in c else "",
        ])  # fmt: skip
    cpu_rows = [
        [
            c["impl"],
            c["seq_len"],
            f"{c['fwd_bwd_s']:.3f}",
            f"{c['bytes_per_device'] / 2**20:.1f}",
            c["load"],
        ]
        for c in data["cpu"]
    ]
    text = "\n\n".join([
        "# Choosing a context-parallel strategy",
        "Llama-3-8B train steps compiled ahead of time for compile-only v5p slices (95 GiB HBM "
        "per chip; nothing ran), one sequence per fsdp rank spread over `context` chips, Pallas "
        "inner tiles, full remat, contiguous layout. GiB sent are what each chip sends per step "
        "by collective kind (from each op's group size g: all-gather and all-to-all (g-1)/g of "
        "the result, reduce-scatter g-1 results, all-reduce 2(g-1)/g, permute its result; loop "
        "trip counts applied); \"hidden\" = the part whose start and done bracket compute in "
        "XLA's schedule. Result bytes per kind are in the JSON (`result_gib`).",
        common.markdown_table(
            ["slice", "T", "B", "context", "impl", "HBM/chip GiB", "fits",
             "GiB sent/step", "floor s/step"], pod_rows),
        "## What each cell favours",
        "Lowest HBM among the strategies that fit, and the fewest GiB sent left exposed "
        "(not overlapped with compute):",
        common.markdown_table(["slice", "T", "lowest HBM (GiB)", "least exposed traffic (GiB)"],
                              favours(data["pod"])),
        "## 8 simulated CPU devices",
        "Causal fwd+bwd, B=1, N=K=8, H=64, float32, blockwise tiles of 128, context = 8 (usp: "
        "Ulysses 2 x ring 4). Wall seconds are the total work of all simulated devices on the "
        "shared cores (load: 1-minute load average); bytes/device are compiled.",
        common.markdown_table(["impl", "T", "fwd+bwd s", "MiB/device", "load"], cpu_rows),
        f"![{png}]({png})",
        "## Provenance",
        common.provenance_markdown(data["provenance"]),
    ]) + "\n"  # fmt: skip
    (out / f"{NAME}.md").write_text(text)


def main(argv=None) -> None:
    parser = common.study_parser(__doc__.splitlines()[0], NAME)
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--cells", type=int, nargs="*", default=list(range(len(CELLS))),
                        help="indices into CELLS (none: skip the pod part)")  # fmt: skip
    parser.add_argument("--cpu-lengths", type=int, nargs="*", default=[4096, 16384])
    parser.add_argument("--reps", type=int, default=2)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    out = args.out / f"{NAME}.json"
    if args.from_results:
        render(common.read_json(out), args.out)
        return
    provenance = common.Provenance(MODULE, argv)
    pod = [pod_cell(*CELLS[i], impl, print) for i in args.cells for impl in args.strategies]
    cpu = [cpu_cell(impl, t, args.reps, print) for t in args.cpu_lengths
           for impl in args.strategies]  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    data = {"pod": pod, "cpu": cpu, "provenance": provenance.finish()}
    common.write_json(out, data)
    render(data, args.out)


if __name__ == "__main__":
    main()
