"""Context-parallel load balance on packed rows: tile work per device for every token layout.

Rows of the ``stdlib_files`` corpus (one document per Python file) are packed by lcm's own
pipeline (``first_fit``, ``best_fit``, ``concat``) at 8K-128K tokens. For each row and token
layout (``lcm.attention.layouts``) over ``--devices`` shards, the causal tiles with document
masks are classified exactly as blockwise classifies them (``tiles.classify_tiles``: EMPTY tiles
are skipped, FULL and PARTIAL computed) for every (ring step, device): ring's time follows the
sum over steps of the busiest device (``ring`` imbalance), all-gather's the busiest device's
total (``all_gather`` imbalance). Nothing is trained or run on devices; the counts are exact.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

from experiments import common

MODULE = "experiments.packed_balance.run"
NAME = "packed_balance"


def packed_rows(length: int, packing: str, rows: int, seed: int) -> list[dict]:
    """The first ``rows`` training rows of ``stdlib_files`` packed at ``length`` tokens."""
    from lcm import config as config_lib
    from lcm.data import pipeline

    config = config_lib.base_config()
    config.seq_len = length
    config.data.corpus = "stdlib_files"
    config.data.packing = packing
    config.data.batch_size = rows
    config.train.seed = seed
    batch = next(iter(pipeline.make_train_iterator(config_lib.validate(config))))
    return [{k: np.asarray(batch[k][i]) for k in ("segment_ids", "positions")} for i in range(rows)]


def tile_work(seg, pos, layout: str, devices: int, block: int) -> np.ndarray:
    """Computed (non-EMPTY) tiles ``[ring step, device]`` of one row in ``layout``.

    At ring step s device r holds query shard r and the key shard of device ``(r - s) mod n``.
    """
    import jax.numpy as jnp

    from lcm.attention import layouts, masks, tiles

    if layout in layouts.PER_ROW:
        perm = layouts.balanced_permutation(seg, devices)
    else:
        perm = layouts.layout_permutation(seg.size, devices, layout)
    shard = lambda x: jnp.asarray(x[perm].reshape(devices, -1))  # noqa: E731
    ranges = tiles.block_ranges(shard(pos), shard(seg), block)
    work = np.zeros((devices, devices), np.int64)
    for s in range(devices):
        keys = type(ranges)(*(jnp.roll(x, s, axis=0) for x in ranges))
        classes = np.asarray(tiles.classify_tiles(masks.Causal(), ranges, keys))
        work[s] = (classes != masks.EMPTY).sum((1, 2))
    return work


def imbalance(work: np.ndarray) -> dict:
    """Extra time over perfect balance (0.1 = 10 % longer), the ring's critical path (tiles
    of the busiest device, summed over steps) and all tiles."""
    mean = work.sum() / work.shape[1]
    return {
        "ring": float(work.max(1).sum() / mean - 1),
        "critical": int(work.max(1).sum()),
        "all_gather": float(work.sum(0).max() / mean - 1),
        "tiles": int(work.sum()),
    }


def measure(args) -> list[dict]:
    from lcm.attention import layouts

    records = []
    for length in args.lengths:
        for packing in args.packings:
            rows = packed_rows(length, packing, args.rows, args.seed)
            for layout in layouts.LAYOUTS:
                per_row = [
                    imbalance(
                        tile_work(
                            r["segment_ids"], r["positions"], layout, args.devices, args.block
                        )
                    )
                    for r in rows
                ]
                docs = [len(np.unique(r["segment_ids"][r["segment_ids"] > 0])) for r in rows]
                record = {
                    "T": length,
                    "packing": packing,
                    "layout": layout,
                    "devices": args.devices,
                    "block": args.block,
                    "rows": len(rows),
                    "documents_per_row": float(np.mean(docs)),
                    "ring_mean": float(np.mean([x["ring"] for x in per_row])),
                    "ring_max": float(np.max([x["ring"] for x in per_row])),
                    "all_gather_mean": float(np.mean([x["all_gather"] for x in per_row])),
                    "all_gather_max": float(np.max([x["all_gather"] for x in per_row])),
                    "tiles_mean": float(np.mean([x["tiles"] for x in per_row])),
                    "critical_mean": float(np.mean([x["critical"] for x in per_row])),
                }
                print(json.dumps(record), flush=True)
                records.append(record)
    return records


def _plot(records, out: pathlib.Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    packings = sorted({r["packing"] for r in records})
    fig, axes = plt.subplots(1, len(packings), figsize=(4.2 * len(packings), 3.6), sharey=True)
    for ax, packing in zip(np.atleast_1d(axes), packings, strict=True):
        for i, layout in enumerate(dict.fromkeys(r["layout"] for r in records)):
            rows = [r for r in records if r["packing"] == packing and r["layout"] == layout]
            ax.plot([r["T"] for r in rows], [100 * r["ring_max"] for r in rows], "o-",
                    color=f"C{i}", label=f"{layout} ring")  # fmt: skip
            ax.plot([r["T"] for r in rows], [100 * r["all_gather_max"] for r in rows], "s:",
                    color=f"C{i}", label=f"{layout} all_gather")  # fmt: skip
        ax.axhline(10, color="grey", lw=0.8, ls="--")
        ax.set(xscale="log", yscale="symlog", xlabel="T (tokens per row)", title=packing)
        ax.set_xticks([r["T"] for r in rows], [f"{r['T'] // 1024}K" for r in rows])
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("worst row: % over perfect balance")
    np.atleast_1d(axes)[-1].legend(fontsize=7)
    fig.suptitle(f"packed stdlib_files rows over {records[0]['devices']} devices, document masks")
    fig.tight_layout()
    fig.savefig(out / f"{NAME}.png", dpi=110)
    plt.close(fig)
    return f"{NAME}.png"


def render(data: dict, out: pathlib.Path) -> None:
    """``<out>/packed_balance.md`` and its plot from the raw results."""
    records = data["records"]
    png = _plot(records, out)
    header = ["T", "packing", "docs/row", "layout", "ring mean", "ring worst", "all_gather mean",
              "all_gather worst", "tiles/row", "ring critical path"]  # fmt: skip
    pct = lambda x: f"{100 * x:.1f} %"  # noqa: E731
    rows = [
        [
            r["T"],
            r["packing"],
            f"{r['documents_per_row']:.1f}",
            r["layout"],
            pct(r["ring_mean"]),
            pct(r["ring_max"]),
            pct(r["all_gather_mean"]),
            pct(r["all_gather_max"]),
            f"{r['tiles_mean']:.0f}",
            f"{r['critical_mean']:.0f}",
        ]
        for r in records
    ]
    r0 = records[0]
    lines = [
        "# Context-parallel load balance on packed rows",
        "",
        f"{r0['rows']} rows per cell of `stdlib_files` (byte tokens, document masks), "
        f"{r0['devices']} devices, tiles of {r0['block']}. Imbalance = extra time over perfect "
        "balance from exact tile counts: **ring** = sum over ring steps of the busiest "
        "device's tiles / (all tiles / devices) - 1; **all_gather** = the busiest device's "
        "tiles / the mean - 1. Mean and worst over the rows. **tiles/row** counts every device's "
        "computed tiles (interleaving documents makes more tiles PARTIAL); **ring critical "
        "path** = the tiles a synchronous ring waits for (sum over steps of the busiest "
        "device's), the time that matters, mean over rows.",
        "",
        common.markdown_table(header, rows),
        "",
        f"![{png}]({png})",
        "",
        "## Provenance",
        "",
        common.provenance_markdown(data["provenance"]),
        "",
    ]
    (out / f"{NAME}.md").write_text("\n".join(lines))


def main(argv=None) -> None:
    parser = common.study_parser(__doc__.splitlines()[0], NAME)
    parser.add_argument("--lengths", type=int, nargs="+",
                        default=[8192, 16384, 32768, 65536, 131072])  # fmt: skip
    parser.add_argument("--packings", nargs="+", default=["first_fit", "best_fit", "concat"])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.from_results:
        render(common.read_json(args.out / f"{NAME}.json"), args.out)
        return
    provenance = common.Provenance(MODULE, argv)
    records = measure(args)
    args.out.mkdir(parents=True, exist_ok=True)
    data = {"records": records, "provenance": provenance.finish()}
    common.write_json(args.out / f"{NAME}.json", data)
    render(data, args.out)


if __name__ == "__main__":
    main()
