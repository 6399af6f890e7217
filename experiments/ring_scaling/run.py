"""Ring attention scaling: per-device memory, time and load balance on 1, 2, 4, 8 devices.

Ring attention (Liu, Zaharia & Abbeel 2023, arXiv 2310.01889) shards the sequence over the
``context`` mesh axis; each of the ``d`` devices holds ``T/d`` queries and passes key/value
shards around the ring. For each device count ``d``, sequence length ``T`` and token layout
(``contiguous``, ``striped`` of Brandon et al. 2023, arXiv 2311.09431, and ``zigzag``) it
reports, for causal attention forward+backward (B=1, N=8, H=64, float32, blockwise tiles):

- ``bytes_per_device``: what XLA reserves per device for the compiled fwd+bwd program
  (``compiled.memory_analysis()``: arguments + outputs + temporaries, inputs sharded over the
  ring). Compiled, not measured: jax's CPU client has no ``memory_stats()``, and the 8
  simulated devices share one process. It does not depend on the layout (same program).
- ``fwd_bwd_s``: median wall time of the jitted call. The ``d`` simulated devices share the
  host's cores, so this is the TOTAL work of all devices, not the per-device critical path a
  real ring would have; the tile counts below give that.
- ``tiles``: causal (query block, key block) tiles blockwise computes, counted exactly as the
  implementation does (``lcm.attention.tiles`` on the layout's positions), per device and ring
  step. ``balance`` = max over devices of tiles computed / mean; ``critical`` = the ring's
  critical path (every step waits for its slowest device: sum over steps of the max over
  devices) / the ideal ``total / d``. 1.0 is perfect balance.

Then, per device count, the largest T (power-of-two steps, then bisection) whose compiled
fwd+bwd fits ``--budget-gib`` per device (compile only; nothing that large is run).

Writes JSON lines to stdout, and ``ring_scaling.json`` (every record, the fits and the
provenance), ``ring_scaling.md`` and PNG plots to ``--out`` (default
``experiments/ring_scaling/results``):

    .venv/bin/python -m experiments.ring_scaling.run                 # CPU default, about 10 min
    .venv/bin/python -m experiments.ring_scaling.run --full          # accelerator: longer T, 16 GiB
    .venv/bin/python -m experiments.ring_scaling.run --from-results  # re-render md + png
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import common
from experiments.bench import ring as bench_ring
from experiments.bench import timing
from lcm.attention import core, layouts, masks, tiles
from lcm.parallel import mesh as mesh_lib
from lcm.parallel import sharding

MODULE = "experiments.ring_scaling.run"
NAME = "ring_scaling"
_GIB = 2**30


def tile_counts(t: int, devices: int, layout: str, block: int) -> np.ndarray:
    """Causal tiles computed ``[ring step, device]`` for ``T = t`` over ``devices`` in ``layout``.

    At ring step s device r holds query shard r and the key shard of device ``(r - s) mod d``
    (``ring._rotate`` sends shard i to i + 1). Counts are blockwise's visit lists: non-empty
    tiles for the true positions of each shard's tokens.
    """
    length = t // devices
    c = min(block, length)
    perm = layouts.layout_permutation(t, devices, layout)
    pos = perm.astype(np.int32).reshape(devices, 1, length)
    # Padded to whole blocks with segment id 0, as blockwise pads.
    ranges = [
        tiles.block_ranges(
            *(core.pad_to_multiple(jnp.asarray(x), c) for x in (p, np.ones_like(p))), c
        )
        for p in pos
    ]
    counts = np.zeros((devices, devices), np.int64)
    for s in range(devices):
        for r in range(devices):
            visits = tiles.visit_lists(
                tiles.classify_tiles(masks.Causal(), ranges[r], ranges[(r - s) % devices])
            )
            counts[s, r] = int(visits.full_count.sum() + visits.partial_count.sum())
    return counts


def balance(counts: np.ndarray) -> dict:
    """Load-balance figures of ``tile_counts`` (1.0 = perfectly balanced)."""
    devices = counts.shape[1]
    mean = counts.sum() / devices
    return {
        "tiles_total": int(counts.sum()),
        "tiles_max_device": int(counts.sum(0).max()),
        "balance": float(counts.sum(0).max() / mean),
        "critical": float(counts.max(1).sum() / mean),
    }


def _mesh(devices: int):
    return mesh_lib.make_mesh(
        {"axes": mesh_lib.MESH_AXES, "shape": (1, 1, devices, 1), "axis_types": "auto"},
        devices=jax.devices()[:devices],
    )


def _shardings(mesh):
    row = NamedSharding(mesh, P(None, "context"))
    return [NamedSharding(mesh, P(None, "context", None, None))] * 3 + [row] * 2


def _abstract(t: int, mesh) -> list:
    """q, k, v, positions and segment ids, sharded over the ring (segment ids are passed, as
    in training, so XLA does not constant-fold all-ones ids at compile time)."""
    shapes = [(1, t, bench_ring.N, bench_ring.H)] * 3 + [(1, t)] * 2
    dtypes = [np.float32] * 3 + [np.int32] * 2
    return [
        jax.ShapeDtypeStruct(s, d, sharding=sh)
        for s, d, sh in zip(shapes, dtypes, _shardings(mesh), strict=True)
    ]


def measure(t: int, devices: int, layouts, block: int, reps: int):
    """Yields one record per layout: compiled bytes per device, fwd+bwd time, tile balance."""
    mesh = _mesh(devices)
    with sharding.use_mesh(mesh):
        _, fwd_bwd = bench_ring.fns("ring", block)
        compiled = fwd_bwd.lower(*_abstract(t, mesh)).compile()
        m = compiled.memory_analysis()
        memory = {
            "bytes_per_device": int(
                m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            ),
            "temp_bytes_per_device": int(m.temp_size_in_bytes),
        }
        for layout in layouts if devices > 1 else ("contiguous",):
            host = bench_ring.inputs(t, layout, devices, segments=True)
            xs = [jax.device_put(x, s) for x, s in zip(host, _shardings(mesh), strict=True)]
            record = {"T": t, "devices": devices, "layout": layout, "block": block, **memory}
            record["fwd_bwd_s"] = timing.median_seconds(compiled, xs, reps)
            record.update(balance(tile_counts(t, devices, layout, block)))
            record["load"] = round(os.getloadavg()[0], 2)
            yield record


def fits_bytes(t: int, devices: int, block: int) -> int:
    """Compiled fwd+bwd bytes per device at ``T = t`` (compile only)."""
    mesh = _mesh(devices)
    with sharding.use_mesh(mesh):
        _, fwd_bwd = bench_ring.fns("ring", block)
        return bench_ring.per_device_bytes(fwd_bwd, _abstract(t, mesh))


def largest_t(devices: int, block: int, budget: float, start: int, bisect: int = 3) -> dict:
    """Largest T whose compiled fwd+bwd fits ``budget`` bytes per device.

    Compiles at ``start`` and ``2 * start``, extrapolates linearly to the budget, doubles from
    there until T no longer fits, then bisects ``bisect`` times between the last fit and the
    first miss. T stays a multiple of ``2 * devices * block`` (whole blocks on every device in
    every layout).
    """
    unit = 2 * devices * block
    start = -(-start // unit) * unit
    first, second = fits_bytes(start, devices, block), fits_bytes(2 * start, devices, block)
    if first > budget:
        return {"devices": devices, "largest_T": None, "below": start}
    lo, lo_bytes = start, first
    if second <= budget:
        lo, lo_bytes = 2 * start, second
        slope = max((second - first) / start, 1.0)
        guess = 2 * start + int((budget - second) / slope)
        hi = max(-(-guess // unit) * unit, lo + unit)
        while (used := fits_bytes(hi, devices, block)) <= budget:
            lo, lo_bytes, hi = hi, used, 2 * hi
    else:
        hi = 2 * start
    for _ in range(bisect):
        mid = (lo + hi) // 2 // unit * unit
        if mid in (lo, hi):
            break
        if (used := fits_bytes(mid, devices, block)) <= budget:
            lo, lo_bytes = mid, used
        else:
            hi = mid
    return {"devices": devices, "largest_T": lo, "bytes_per_device": lo_bytes, "next_miss": hi}


def _plots(records, out: pathlib.Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices = sorted({r["devices"] for r in records})
    fig, (mem_ax, time_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for d in devices:
        rows = [r for r in records if r["devices"] == d and r["layout"] in ("contiguous",)]
        mem_ax.plot([r["T"] for r in rows], [r["bytes_per_device"] / _GIB for r in rows], "o-",
                    label=f"{d} device(s)")  # fmt: skip
        for layout, style in zip(layouts.FIXED, ("o-", "s--", "^:"), strict=True):
            rows = [r for r in records if r["devices"] == d and r["layout"] == layout]
            if rows:
                time_ax.plot([r["T"] for r in rows], [r["fwd_bwd_s"] for r in rows], style,
                             color=f"C{devices.index(d)}", label=f"d={d} {layout}")  # fmt: skip
    mem_ax.set(xscale="log", yscale="log", xlabel="T", ylabel="GiB per device (compiled)",
               title="ring fwd+bwd memory per device")  # fmt: skip
    time_ax.set(xscale="log", yscale="log", xlabel="T", ylabel="seconds (all simulated devices)",
                title="ring fwd+bwd wall time (shared cores)")  # fmt: skip
    for ax in (mem_ax, time_ax):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "ring_scaling.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    t_max = max(r["T"] for r in records)
    for layout in layouts.FIXED:
        # One device has one layout: it is every curve's starting point.
        rows = [
            r for r in records if r["T"] == t_max and (r["layout"] == layout or r["devices"] == 1)
        ]
        ax.plot([r["devices"] for r in rows], [r["critical"] for r in rows], "o-", label=layout)
    ax.set(xscale="log", xlabel="devices", ylabel="critical path / ideal",
           title=f"ring causal load balance, T={t_max}")  # fmt: skip
    ax.set_xticks(devices, [str(d) for d in devices])
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "ring_scaling_balance.png", dpi=110)
    plt.close(fig)
    return ["ring_scaling.png", "ring_scaling_balance.png"]


def render(data: dict, out: pathlib.Path) -> None:
    """``<out>/ring_scaling.md`` and its plots from the raw results (``ring_scaling.json``)."""
    records, fits, budget_gib = data["records"], data["fits"], data["budget_gib"]
    pngs = _plots(records, out)
    lines = [
        "# Ring attention scaling (issue #10 item 4)",
        "",
        "Devices are simulated (`--xla_force_host_platform_device_count=8`) and share the "
        "host's cores.",
        "",
        "Causal attention forward+backward, B=1, N=8, H=64, float32, blockwise tiles of "
        f"{records[0]['block']}. Wall times depend on the machine's load (`load` "
        "column: the 1-minute load average; provenance: the run's); memory figures (compiled) and "
        "tile counts are exact.",
        "",
        "- **bytes/device**: `compiled.memory_analysis()` of the fwd+bwd program "
        "(arguments + outputs + temporaries) with inputs sharded over the ring; the same for "
        "every layout.",
        "- **time**: wall seconds of the whole fwd+bwd. The simulated devices run on the same "
        "cores, so this is the total work of all devices (it does not fall with more devices); "
        "on real devices the ring's time follows the critical path.",
        "- **balance** = max over devices of tiles computed / mean; **critical** = sum over ring "
        "steps of the slowest device's tiles / (total tiles / d), i.e. how much longer than "
        "perfect balance a synchronous ring takes. Tiles are counted as blockwise visits them.",
        "",
        "| T | devices | layout | MiB/device | fwd+bwd s | tiles total | balance | critical |"
        " load |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        lines.append(
            f"| {r['T']} | {r['devices']} | {r['layout']} | {r['bytes_per_device'] / 2**20:.1f} "
            f"| {r['fwd_bwd_s']:.3f} | {r['tiles_total']} | {r['balance']:.2f} "
            f"| {r['critical']:.2f} | {r['load']} |"
        )
    lines += (
        []
        if not fits
        else [
            "",
            f"## Largest T that fits {budget_gib:g} GiB per device (compiled fwd+bwd, not run)",
            "",
            "| devices | largest T | MiB/device there | first T that does not fit |",
            "|---:|---:|---:|---:|",
        ]
    )
    for f in fits:
        if f["largest_T"] is None:
            lines.append(f"| {f['devices']} | < {f['below']} | | |")
        else:
            lines.append(
                f"| {f['devices']} | {f['largest_T']} | {f['bytes_per_device'] / 2**20:.0f} "
                f"| {f['next_miss']} |"
            )
    lines += ["", *(f"![{p}]({p})" for p in pngs), ""]
    lines += ["## Provenance", "", common.provenance_markdown(data["provenance"]), ""]
    (out / f"{NAME}.md").write_text("\n".join(lines))


def main(argv=None) -> None:
    parser = common.study_parser(__doc__.splitlines()[0], NAME)
    parser.add_argument("--lengths", type=int, nargs="+", default=[768, 1536, 3072, 6144])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--layouts", nargs="+", choices=layouts.FIXED, default=list(layouts.FIXED))
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--budget-gib", type=float, default=1.0, help="0: skip the fit search")
    parser.add_argument("--fit-start", type=int, default=12288, help="first T of the fit search")
    parser.add_argument("--full", action="store_true", help="accelerator setting: T up to 65536")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.from_results:
        render(common.read_json(args.out / f"{NAME}.json"), args.out)
        return
    if args.full:
        args.lengths, args.reps, args.block = [3072, 12288, 49152, 98304], 4, 512
        args.fit_start, args.budget_gib = max(args.fit_start, 49152), 16.0
    if max(args.devices) > len(jax.devices()):
        raise ValueError(f"--devices {args.devices}: only {len(jax.devices())} devices")
    provenance = common.Provenance(MODULE, argv)
    records, fits = [], []
    for t in args.lengths:
        for d in args.devices:
            for record in measure(t, d, args.layouts, args.block, args.reps):
                print(json.dumps(record), flush=True)
                records.append(record)
    for d in args.devices if args.budget_gib > 0 else ():
        fit = largest_t(d, args.block, args.budget_gib * _GIB, args.fit_start)
        print(json.dumps({"budget_gib": args.budget_gib, **fit}), flush=True)
        fits.append(fit)
    args.out.mkdir(parents=True, exist_ok=True)
    data = {
        "records": records,
        "fits": fits,
        "budget_gib": args.budget_gib,
        "provenance": provenance.finish(),
    }
    common.write_json(args.out / f"{NAME}.json", data)
    render(common.read_json(args.out / f"{NAME}.json"), args.out)


if __name__ == "__main__":
    main()
