"""All attention benchmarks in one table: time and memory vs T per implementation.

Runs the benchmarks of ``experiments/bench/`` (sources ``bench_attention``, ``bench_ring``,
``bench_kernels``, ``bench_sparse`` and ``bench_train``: ``python -m experiments.bench.<x>``,
each its own subprocess, at small sizes by default), keeps every JSON line they print (tagged
with its source) in ``results/attention_benchmarks.jsonl`` (its first line: the provenance and
the sources' arguments), adds earlier committed JSONL results (``--include``, default
``results/bench_sparse.jsonl``), and writes one table with plots to
``results/attention_benchmarks.md``. What each number means is the source script's definition:

- ``bench_attention``, ``bench_sparse``: median wall seconds of the jitted call; memory = peak
  RSS minus the RSS before the case (measured, one subprocess per case).
- ``bench_ring``: 8 simulated CPU devices sharing the host's cores (time = all devices' work);
  memory = compiled bytes per device (``memory_analysis``), not measured.
- ``bench_kernels``: on CPU, Pallas in interpret mode (simulator speed, not kernel speed).
- ``bench_train``: one whole training step of the quickstart model (time), with its MFU.

    .venv/bin/python -m experiments.attention_benchmarks.run                 # CPU, about 15 min
    .venv/bin/python -m experiments.attention_benchmarks.run --full          # accelerator sizes
    .venv/bin/python -m experiments.attention_benchmarks.run --from-results  # re-render the JSONL
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

from experiments import common

MODULE = "experiments.attention_benchmarks.run"
_ROOT = common.REPO_ROOT
_RESULTS = common.results_dir("attention_benchmarks")
_GIB = 2**30
# Source name (the ``source`` tag of its records) -> its module.
MODULES = {
    "bench_attention": "experiments.bench.attention",
    "bench_ring": "experiments.bench.ring",
    "bench_kernels": "experiments.bench.kernels",
    "bench_sparse": "experiments.bench.sparse",
    "bench_train": "experiments.bench.train",
}

# Arguments per source: small sizes for a 2-core CPU, and the issues' sizes for an accelerator.
SMALL = {
    "bench_attention": ["--lengths", "1024", "2048", "4096", "--windows", "0", "--reps", "2"],
    "bench_ring": ["--seq", "2048", "--mem-seq", "16384", "--reps", "2"],
    "bench_kernels": ["--seq", "512", "--runs", "1"],
    "bench_sparse": ["--lengths", "2048", "4096", "--reps", "1"],
    "bench_train": ["--impl", "blockwise", "xla", "--block", "128", "--steps", "2"],
}
FULL = {
    "bench_attention": [],
    "bench_ring": ["--seq", "16384", "--mem-seq", "131072"],
    "bench_kernels": [],
    "bench_sparse": [],
    "bench_train": ["--impl", "blockwise", "xla", "pallas"],
}


def run_source(name: str, args: list[str]) -> list[dict]:
    """Runs ``python -m experiments.bench.<x> args`` (source ``name``) and returns its JSON
    lines, each tagged ``source``."""
    command = [sys.executable, "-m", MODULES[name], *args]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=_ROOT, check=False)
    records = [
        {"source": name, **json.loads(line)}
        for line in proc.stdout.splitlines()
        if line.startswith("{")
    ]
    if proc.returncode:
        tail = proc.stderr.strip().splitlines()[-1:]
        records.append({"source": name, "error": f"exit {proc.returncode}: {tail}"})
    return records


def read_jsonl(path: pathlib.Path) -> list[dict]:
    """Records of a committed JSONL file; its first line may be run metadata (``command``)."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    meta = records[0] if records and "command" in records[0] else {}
    source = path.stem + (f" (committed: {meta.get('commit', '?')})" if meta else "")
    return [{"source": source, **r} for r in records if r is not meta]


def rows(records: list[dict]) -> list[dict]:
    """One table row per timed or sized case: ``source, impl, T, variant, fwd_s, fwd_bwd_s,
    mem_gib, mem_kind, load, note``."""
    out = []
    for r in records:
        src = r["source"]
        row = {"source": src, "fwd_s": None, "fwd_bwd_s": None, "mem_gib": None,
               "mem_kind": "", "load": r.get("load"), "note": ""}  # fmt: skip
        if "error" in r or "skipped" in r:
            row.update(impl=r.get("impl", "?"), T=r.get("T"), variant=r.get("mask", ""),
                       note=str(r.get("error") or r.get("skipped")))  # fmt: skip
        elif src.startswith("bench_attention") or src.startswith("bench_sparse"):
            if r.get("summary"):
                continue
            variant = r.get("mask", "causal")
            if r.get("block"):
                variant += f", block {r['block']}" + (f" top-{r['top_k']}" if "top_k" in r else "")
            row.update(impl=r["impl"], T=r["T"], variant=variant, fwd_s=r.get("fwd_s"),
                       fwd_bwd_s=r["fwd_bwd_s"], mem_gib=r["peak_rss_gib"] - r["base_rss_gib"],
                       mem_kind="RSS added")  # fmt: skip
        elif src.startswith("bench_ring"):
            if "layout" in r:
                row.update(impl="ring x8 (simulated)", T=r["T"], variant=r["layout"],
                           fwd_s=r["fwd_s"], fwd_bwd_s=r["fwd_bwd_s"])  # fmt: skip
            else:
                for impl, key in (
                    ("ring x8 (simulated)", "fwd_bwd_bytes_per_device_ring8"),
                    ("blockwise x1", "fwd_bwd_bytes_one_device_blockwise"),
                ):
                    out.append(
                        {**row, "impl": impl, "T": r["T"], "variant": "zigzag, fwd+bwd",
                         "mem_gib": r[key] / _GIB, "mem_kind": "compiled/device"}
                    )  # fmt: skip
                continue
        elif src.startswith("bench_kernels"):
            if r.get("bench") == "tiles_visited":
                row.update(impl=f"{r['kernel']} kernel", T=r["seq"], variant=r["mask"],
                           note=f"tiles {r['tiles_computed']} of {r['tiles_dense']} "
                           f"(non-empty {r['tiles_nonempty']})")  # fmt: skip
            elif "skipped" in r or "seconds" not in r:
                continue
            else:
                mode = r.get("mode", r.get("backend"))
                row.update(impl=f"{r['impl']} ({mode})", T=r["shape_bnth"][2],
                           variant=f"causal={r['causal']}, B,N,H={r['shape_bnth'][0]},"
                           f"{r['shape_bnth'][1]},{r['shape_bnth'][3]}")  # fmt: skip
                row["fwd_s" if r["pass_"] == "fwd" else "fwd_bwd_s"] = r["seconds"]
        elif src.startswith("bench_train"):
            row.update(impl=f"train step ({r['impl']})", T=r["seq_len"],
                       variant=f"batch {r['batch']}, block {r['block']}",
                       fwd_bwd_s=r["step_s"], note=f"MFU {r['mfu']:.3f}, "
                       f"{r['tokens_per_sec']:.0f} tokens/s")  # fmt: skip
        else:
            continue
        out.append(row)
    return _merge_passes(out)


def _merge_passes(table: list[dict]) -> list[dict]:
    """Joins bench_kernels' separate fwd and fwd+bwd lines into one row."""
    merged: dict = {}
    for row in table:
        key = (row["source"], row["impl"], row["T"], row["variant"], row["note"])
        if key in merged and row["note"] == "":
            for field in ("fwd_s", "fwd_bwd_s"):
                merged[key][field] = merged[key][field] or row[field]
        else:
            merged[key if row["note"] == "" else (*key, len(merged))] = row
    return list(merged.values())


def missing(records: list[dict]) -> list[str]:
    """What this collection does not contain, in words."""
    backends = {r.get("backend") for r in records if r.get("backend")}
    notes = []
    if not backends & {"tpu", "gpu"}:
        notes.append(
            "No compiled Pallas numbers: no TPU or GPU here, so `bench_kernels` ran the flash "
            "kernels in Pallas interpret mode (simulator speed, not kernel speed) and the "
            "compiled TFLOP/s and block-sparse kernel timings are absent."
        )
    notes += [
        "No `pallas` or `reference` rows in `bench_attention` (the pallas impl on CPU is the "
        "interpreter; reference is dense like xla).",
        "Sparse: only MoBA and NSA are benchmarked (`bench_sparse`); HSA, S2-Attn and "
        "sink_window have no benchmark yet.",
        "Ring: 8 simulated devices on a 2-core host, so ring times are the total work of all "
        "devices, not a multi-device speed-up; see ring_scaling.md for per-device memory and "
        "load balance.",
        "Memory is measured (RSS) for single-device cases and compiled (XLA's memory analysis) "
        "for ring; jax's CPU client reports no device memory statistics.",
    ]
    return notes


def _fmt(x, digits=3):
    return "" if x is None else f"{x:.{digits}f}"


def _plots(table: list[dict], out: pathlib.Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (time_ax, mem_ax) = plt.subplots(1, 2, figsize=(12, 6))
    series: dict = {}
    for row in table:
        source = row["source"].split(" ")[0] + (
            " (earlier)" if "committed" in row["source"] else ""
        )
        label = f"{source}: {row['impl']} [{row['variant']}]"
        if row["T"] is not None and (row["fwd_bwd_s"] is not None or row["mem_gib"] is not None):
            series.setdefault(label, []).append(row)
    for i, (label, points) in enumerate(sorted(series.items())):
        points = sorted(points, key=lambda r: r["T"])
        style = dict(marker="os^vD<>ph*"[i % 10], color=f"C{i % 10}", label=label)
        timed = [p for p in points if p["fwd_bwd_s"] is not None]
        if timed:
            time_ax.plot([p["T"] for p in timed], [p["fwd_bwd_s"] for p in timed], **style)
        sized = [p for p in points if p["mem_gib"] is not None]
        if sized:
            mem_ax.plot([p["T"] for p in sized], [p["mem_gib"] for p in sized], **style)
    time_ax.set(xscale="log", yscale="log", xlabel="T", ylabel="fwd+bwd seconds (train: step)",
                title="time vs T (CPU; see the load column)")  # fmt: skip
    mem_ax.set(xscale="log", yscale="log", xlabel="T", ylabel="GiB",
               title="memory vs T (RSS added, or compiled per device)")  # fmt: skip
    for ax in (time_ax, mem_ax):
        ax.grid(alpha=0.3)
    handles, labels = time_ax.get_legend_handles_labels()
    more = [
        (h, lab)
        for h, lab in zip(*mem_ax.get_legend_handles_labels(), strict=True)
        if lab not in labels
    ]
    fig.legend(handles + [h for h, _ in more], labels + [lab for _, lab in more],
               fontsize=6, loc="lower center", ncol=2)  # fmt: skip
    fig.tight_layout(rect=(0, 0.3, 1, 1))
    fig.savefig(out / "attention_benchmarks.png", dpi=110)
    plt.close(fig)
    return ["attention_benchmarks.png"]


def write_report(records, info, out: pathlib.Path) -> None:
    """``<out>/attention_benchmarks.{md,png}``; ``info``: the provenance (``common.Provenance``)
    with ``sources`` (name -> arguments) and ``included`` (paths)."""
    table = rows(records)
    pngs = _plots(table, out)
    cores = info.get("cores", 2)
    lines = [
        "# Attention benchmarks, collected (issue #10 item 5)",
        "",
        "Wall times grow with the machine's load (the `load` column is the 1-minute load "
        f"average when a case started; above {cores} on this {cores}-core "
        "host, other processes competed); "
        "memory figures are not affected. Raw JSON lines: `attention_benchmarks.jsonl`. "
        "Sources and their arguments:",
        "",
        *(f"- `{MODULES.get(name, name)} {' '.join(a)}`" for name, a in info["sources"].items()),
        *(f"- included: `{p}`" for p in info["included"]),
        "",
        "| source | impl | T | variant | fwd s | fwd+bwd s | memory GiB | memory kind | load "
        "| note |",
        "|---|---|---:|---|---:|---:|---:|---|---:|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['source']} | {r['impl']} | {r['T'] if r['T'] is not None else ''} "
            f"| {r['variant']} | {_fmt(r['fwd_s'])} | {_fmt(r['fwd_bwd_s'])} "
            f"| {_fmt(r['mem_gib'])} | {r['mem_kind']} | {r['load'] if r['load'] else ''} "
            f"| {r['note']} |"
        )
    lines += ["", "## Missing", "", *(f"- {m}" for m in missing(records)), ""]
    lines += [*(f"![{p}]({p})" for p in pngs), ""]
    provenance = {k: v for k, v in info.items() if k not in ("sources", "included")}
    lines += ["## Provenance", "", common.provenance_markdown(provenance), ""]
    (out / "attention_benchmarks.md").write_text("\n".join(lines))


def main(argv=None) -> None:
    parser = common.study_parser(__doc__.splitlines()[0], "attention_benchmarks")
    parser.add_argument("--sources", nargs="+", choices=list(SMALL), default=list(SMALL))
    parser.add_argument("--full", action="store_true", help="accelerator sizes (scripts' own)")
    parser.add_argument(
        "--include", nargs="*", type=pathlib.Path, default=[_RESULTS / "bench_sparse.jsonl"]
    )
    parser.add_argument(
        "--arg", nargs=2, action="append", default=[], metavar=("SOURCE", "ARGS"),
        help="replace a source's arguments, e.g. --arg bench_ring '--seq 64 --reps 1'",
    )  # fmt: skip
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    jsonl = args.out / "attention_benchmarks.jsonl"
    if args.from_results:
        lines = jsonl.read_text().splitlines()
        info, records = json.loads(lines[0]), [json.loads(x) for x in lines[1:]]
        write_report(records, info, args.out)
        return
    chosen = {**(FULL if args.full else SMALL), **{k: v.split() for k, v in args.arg}}
    sources = {name: chosen[name] for name in args.sources}
    provenance = common.Provenance(MODULE, argv)
    records = []
    for name, source_args in sources.items():
        for record in run_source(name, source_args):
            print(json.dumps(record), flush=True)
            records.append(record)
    for path in args.include:
        records += read_jsonl(path)
    info = provenance.finish()
    info.update(sources=sources, included=[str(p.relative_to(_ROOT)) for p in args.include])
    args.out.mkdir(parents=True, exist_ok=True)
    jsonl.write_text("".join(json.dumps(x) + "\n" for x in [info, *records]))
    write_report(records, info, args.out)


if __name__ == "__main__":
    main()
