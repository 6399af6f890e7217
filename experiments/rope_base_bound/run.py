"""The RoPE base lower bound per context length (Men et al. 2024), and its retrieval claim.

    .venv/bin/python -m experiments.rope_base_bound.run            # default: 2-core CPU
    .venv/bin/python -m experiments.rope_base_bound.run --full     # to 1M and more bases
    .venv/bin/python -m experiments.rope_base_bound.run --toy      # tiny sizes; the smoke test
    .venv/bin/python -m experiments.rope_base_bound.run --from-results  # re-render md + png

"Base of RoPE Bounds Context Length" (arXiv:2405.14591):

1. Table 2: the smallest base with ``B(m) = Σ_i cos(m θ_i) ≥ 0`` for every ``m ≤ L``
   (head_dim 128), recomputed with ``lcm.positional.base_bound.min_base`` beside the paper's
   values, the paper's fit ``0.0424 L^1.628`` and ``min_m B`` at the paper's rounded value.
2. The claim at tiny scale: byte-level RoPE models at L = 256 (head_dim 32, whose bound is
   about 2.2e3) with bases below and above the bound (``experiments/
   rope_base_bound/configs.py:<base>``: 1e2, B(m) < 0 from m = 28; 1e3, B(m) < 0 from m = 122; 1e4,
   B(m) > 0 up to L). Each base gets a language model (same data, seed and steps, a quarter of
   each batch synthetic passkey documents) for perplexity at L, and a model of the same
   architecture trained from scratch on retrieval alone (``common.retrieval_train``: every
   row a fresh passkey document, loss on the answer alone) for passkey retrieval at L. The
   paper: a base below the bound keeps perplexity low but loses retrieval ("superficial
   long-context capability"). At L = 512 the retrieval models did not learn the task within
   600 steps (answer loss still 1.2-1.7), hence L = 256.

Writes ``experiments/rope_base_bound/results/rope_base_bound.{json,md,png}`` (the JSON: the
bound table, every model's scores and the provenance, from which ``--from-results`` re-renders
the rest).
"""

from __future__ import annotations

import pathlib
import sys
import time

import matplotlib
import numpy as np

from experiments import common
from experiments.rope_base_bound import configs
from lcm.positional import base_bound

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MODULE = "experiments.rope_base_bound.run"
NAME = "rope_base_bound"
HEAD_DIM = 128  # the paper's Table 2
PAPER = {  # Table 2: context length -> lower bound of the base
    1024: 4.3e3,
    2048: 1.6e4,
    4096: 2.7e4,
    8192: 8.4e4,
    16384: 3.1e5,
    32768: 6.4e5,
    65536: 2.1e6,
    131072: 7.8e6,
    262144: 3.6e7,
    524288: 6.4e7,
    1048576: 5.1e8,
}
PLAN = {  # per setting: the bound table's lengths and the bases trained
    "toy": {"table": (1024, 2048), "bases": (1e2, 1e4)},
    "default": {  # --full: the table to 1M (minutes each)
        "table": tuple(n for n in PAPER if n <= 32768),
        "bases": (1e2, 1e3, 1e4),
    },
    "full": {"table": tuple(PAPER), "bases": (1e2, 1e3, 5e3, 1e4, 2e4, 1e5, 1e6)},
}


def bound_table(lengths, log) -> list[dict]:
    """One row per context length: computed bound, paper value, fit, min B at the paper's base."""
    rows = []
    for n in lengths:
        start = time.perf_counter()
        computed = base_bound.min_base(n, HEAD_DIM)
        paper = PAPER[n]
        min_b = float(base_bound.rope_score_bound(np.arange(n + 1), paper, HEAD_DIM).min())
        rows.append(
            {
                "length": n,
                "computed": computed,
                "paper": paper,
                "ratio": computed / paper,
                "fit": 0.0424 * n**1.628,
                "min_B_at_paper": min_b,
            }
        )
        log(
            f"bound L={n}: {computed:.4g} (paper {paper:.2g}) in {time.perf_counter() - start:.1f}s"
        )
    return rows


def _first_negative(base: float, length: int, head_dim: int) -> str:
    """The first distance m <= length with B(m) < 0, or 'none' (the base meets the bound)."""
    b = base_bound.rope_score_bound(np.arange(length + 1), base, head_dim)
    return f"m = {int(np.argmax(b < 0))}" if (b < 0).any() else f"none up to {length}"


def _cells(record: dict, key: str) -> list[float]:
    return [c[key] for c in record["cells"] if c.get(key) is not None]


def _plot(table: list[dict], models: dict, length: int, head_dim: int, path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    xs = [r["length"] for r in table]
    ax.plot(xs, [r["computed"] for r in table], "o-", label="recomputed (min_base)")
    ax.plot(xs, [r["paper"] for r in table], "s--", label="paper, Table 2")
    ax.plot(xs, [r["fit"] for r in table], ":", label="paper fit 0.0424 L^1.628")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length L")
    ax.set_ylabel(f"lower bound of the base (head_dim {HEAD_DIM})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    m = np.arange(2 * length + 1)
    for base in models:
        ax.plot(m, base_bound.rope_score_bound(m, base, head_dim), label=f"base {base:g}")
    ax.axhline(0, color="black", lw=0.8)
    ax.axvline(length, color="grey", ls=":", lw=0.8)
    ax.set_xlabel("relative distance m")
    ax.set_ylabel(f"B(m) = sum_i cos(m theta_i), head_dim {head_dim}")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    ax = axes[2]
    names = list(models)
    tasks = list(next(iter(models.values()))["tasks"])
    width = 0.8 / len(tasks)
    for i, task in enumerate(tasks):
        scores = [np.mean(_cells(models[b]["tasks"][task], "score") or [np.nan]) for b in names]
        ax.bar(np.arange(len(names)) + i * width, scores, width, label=task)
    ax.set_xticks(np.arange(len(names)) + width * (len(tasks) - 1) / 2)
    ax.set_xticklabels([f"base {b:g}" for b in names])
    ax.set_ylabel(f"exact match at L = {length} (%, mean over depths)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args) -> pathlib.Path:
    """Computes the table, trains and scores every base, writes the raw results, renders."""
    log = common.logger(args.quiet)
    provenance = common.Provenance(MODULE, args.argv)
    work, out = pathlib.Path(args.workdir), pathlib.Path(args.out)
    plan = PLAN[args.setting]
    table = bound_table(plan["table"], log)
    models = {}
    tune, steps = configs.TUNE[args.setting], configs.STEPS[args.setting]
    for base in plan["bases"]:
        config = configs.get_config(f"{base:g},{args.setting}")
        config.lock()
        workdir = work / f"base{base:g}"
        final = common.train(config, workdir, log=log)
        lm = common.override(config, {"eval.tasks": ("perplexity",)})
        perplexity = common.evaluate(lm, workdir, "perplexity", log=log)["perplexity"]
        tasks = tuple(t for t in config.eval.tasks if t != "perplexity")
        retrieval = common.override(config, {**tune, "eval.tasks": tasks})
        retrieval_dir = work / f"base{base:g}_retrieval"
        common.retrieval_train(retrieval, retrieval_dir, steps=steps, tasks=tasks, log=log)
        results = common.evaluate(retrieval, retrieval_dir, "retrieval", log=log)
        models[str(base)] = {
            "eval_loss": final.get("eval_loss"),
            "perplexity": perplexity["results"][0]["perplexity"],
            "tasks": results["tasks"],
        }
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "setting": args.setting,
        "table": table,
        "models": models,
        "provenance": provenance.finish(),
    }
    common.write_json(out / f"{NAME}.json", data)
    md = render(common.read_json(out / f"{NAME}.json"), out)
    log(md.read_text())
    return md


def render(data: dict, out: pathlib.Path) -> pathlib.Path:
    """``<out>/rope_base_bound.{md,png}`` from the raw results; returns the md path."""
    setting, table = data["setting"], data["table"]
    models = {float(base): m for base, m in data["models"].items()}
    steps, tune = configs.STEPS[setting], configs.TUNE[setting]
    config = configs.get_config(f"{max(models):g},{setting}")
    tasks = tuple(t for t in config.eval.tasks if t != "perplexity")
    length, head_dim = config.seq_len, config.model.head_dim
    bound = base_bound.min_base(length, head_dim)
    png = out / f"{NAME}.png"
    _plot(table, models, length, head_dim, png)

    table_md = common.markdown_table(
        [
            "L",
            "recomputed bound",
            "paper",
            "recomputed / paper",
            "fit 0.0424 L^1.628",
            "min_m B(m) at the paper's base",
        ],
        [
            [r["length"], r["computed"], r["paper"], r["ratio"], r["fit"], r["min_B_at_paper"]]
            for r in table
        ],
    )
    task_names = list(next(iter(models.values()))["tasks"])
    model_rows = []
    for base, mres in models.items():
        row = [f"{base:g}", "below" if base < bound else "above", mres["perplexity"]]
        for task in task_names:
            record = mres["tasks"][task]
            row += [float(np.mean(_cells(record, "score") or [np.nan]))]
            row += [float(np.mean(_cells(record, "target_nll") or [np.nan]))]
        model_rows.append(row)
    model_md = common.markdown_table(
        ["base", "vs bound", f"perplexity at L={length}"]
        + [f"{t} {k}" for t in task_names for k in ("exact match %", "answer NLL")],
        model_rows,
    )
    depth_lines = []
    for task in task_names:
        for base, mres in models.items():
            cells = mres["tasks"][task]["cells"]
            depth_lines.append(
                f"- {task}, base {base:g}: "
                + ", ".join(
                    f"{100 * c['depth']:g}%: {c['score']:.0f}"
                    if c.get("score") is not None
                    else f"{100 * c['depth']:g}%: -"
                    for c in cells
                )
            )
    c = config
    text = "\n".join(
        [
            "# Base of RoPE bounds context length: the bound table and a tiny-scale check",
            "",
            "Produced by `python -m experiments.rope_base_bound.run` (setting: "
            f"`{setting}`); numbers below are this run's, unedited.",
            "",
            "## 1. Lower bound of the RoPE base per context length (head_dim 128)",
            "",
            "`min_base(L, 128)`: the smallest base on a geometric grid (1000 points per decade, "
            "scanned upward from L/4, then bisection to 1e-4) with B(m) >= 0 for all integer "
            "m <= L. The last column evaluates B at the paper's rounded value.",
            "",
            table_md,
            "",
            "## 2. Perplexity and retrieval at the training length, bases below and above the "
            "bound",
            "",
            f"- Models: byte-level RoPE, {c.model.num_layers} layers, d_model {c.model.d_model},"
            f" head_dim {head_dim}, trained at L = {length} for {c.train.num_steps} steps of "
            f"{c.data.batch_size} x {length} bytes (seed {c.train.seed}) on stdlib code with "
            f"{c.data.synthetic_share:.0%} of each batch's rows synthetic retrieval documents "
            f"(passkey at {length} bytes; `config.data.synthetic_share`).",
            f"- Retrieval models (same architecture and bases, from scratch, "
            f"`common.retrieval_train`): {steps} steps of "
            f"{tune['data.batch_size']} x {length} bytes, every row a fresh "
            f"{' or '.join(tasks)} document, loss on the answer and its newline alone "
            '(`config.data.synthetic_loss = "answer"`), peak lr '
            f"{c.train.learning_rate:g}, warmup 10 %, cosine.",
            f"- Bound for head_dim {head_dim} and L = {length}: min_base = {bound:.4g}. "
            "B(m) < 0 first at: "
            + ", ".join(f"base {b:g}: {_first_negative(b, length, head_dim)}" for b in models)
            + ".",
            f"- Evaluation at L: perplexity of the language model (`truncate`, "
            f"{c.eval.num_documents} held-out packages), and retrieval of the retrieval model: "
            f"{' / '.join(f'`{t}`' for t in tasks)} at depths "
            f"{[f'{100 * d:g}%' for d in c.eval.depths]}, {c.eval.samples_per_cell} samples "
            "each, greedy exact match and the teacher-forced answer NLL (nats per token).",
            "",
            model_md,
            "",
            "Exact match per depth:",
            "",
            *depth_lines,
            "",
            f"![bound table, B(m) and retrieval]({png.name})",
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
        models="rope_base_bound",
        full_help="table to 1M, more bases, larger",
    )


def main(argv: list[str]) -> pathlib.Path:
    args = parse(argv)
    if args.from_results:
        return render(common.read_json(args.out / f"{NAME}.json"), args.out)
    return run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
