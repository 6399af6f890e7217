r"""Experiment: long-context data recipes at an equal token budget (issue 15).

The same small RoPE model is trained from the same initialization on the Python standard library
(``stdlib_files``: one document per file, whole packages held out) with each recipe of
``lcm.data.recipes``, for the same number of steps of ``batch_size * seq_len`` tokens (marker
tokens of Untie the Knots count towards the budget), then evaluated with the ``lcm.eval`` runner:
perplexity (``truncate`` protocol) at 1x, 2x and 4x the training length on held-out files, and
passkey / NIAH (``niah_single_1``) exact-match scores at the same lengths. Recipes:

- ``chunk``: concat-and-chunk (documents back to back, cut every ``seq_len``, rows shuffled; no
  document masking; every token predicted from the one before, across documents too);
- ``packed``: best-fit packing with document masking (a document's first token never a target);
- ``concat_by_repo``: ProLong, files of a package in path order, 40% of rows from packages
  shorter than 4x ``seq_len`` and 60% from longer ones, best-fit packed, document masking;
- ``structured``: SPLiCe, breadth-first over files of the same package (same directory first),
  top-2, concatenated and cut into ``seq_len`` pieces, best-fit packed (a full piece is one row,
  as the paper's truncated samples), no document masking;
- ``untie_knots``: UtK, 1-3 chunks per document, shuffled with within-document order kept,
  marker tokens with masked loss (no chunk-order task);
- ``decomposition``: Dataset Decomposition, buckets 32 .. ``seq_len``, one bucket per step.

Writes ``<out>/data_recipes.md`` (table, command, commit, machine, load average) and
``<out>/data_recipes.png``; per-run workdirs go under ``--workdir``. The default setting is sized
for about 12 minutes on a quiet 2-core CPU; ``--full`` trains a larger model 5x longer.

    python experiments/data_recipes.py                      # default setting
    python experiments/data_recipes.py --full               # the full setting
    python experiments/data_recipes.py --toy --out /tmp/x   # seconds; what the smoke test runs
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# name -> config.data overrides (every other field is shared).
RECIPES = {
    "chunk": {
        "recipe": "documents",
        "packing": "concat",
        "document_masking": False,
        "mask_first_token": False,
    },
    "packed": {"recipe": "documents", "packing": "best_fit", "document_masking": True},
    "concat_by_repo": {"recipe": "concat_by_repo", "packing": "best_fit", "document_masking": True},
    "structured": {"recipe": "structured", "packing": "best_fit", "document_masking": False},
    "untie_knots": {"recipe": "untie_knots"},
    "decomposition": {"recipe": "decomposition"},
}
# The toy setting trains on a few small packages (seconds of data planning, not minutes).
TOY_CORPUS = "data_recipes_toy"
TOY_PACKAGES = (
    "contextvars", "struct", "decimal", "tty", "this", "keyword", "secrets", "token", "sqlite3",
    "dbm", "json", "collections",
)  # fmt: skip
SETTINGS = {
    # seq_len, batch, steps, d_model, layers, heads, mlp, eval documents, samples per cell
    "toy": dict(seq_len=64, batch=4, steps=3, d_model=32, layers=1, heads=2, mlp=64, docs=2, n=1),
    "default": dict(
        seq_len=256, batch=8, steps=200, d_model=64, layers=2, heads=4, mlp=192, docs=8, n=2
    ),
    "full": dict(
        seq_len=256, batch=16, steps=600, d_model=128, layers=4, heads=4, mlp=384, docs=16, n=4
    ),
}


def make_config(name: str, setting: dict, cache_dir: str | None):
    from lcm import config as config_lib

    s = setting
    config = config_lib.base_config()
    config.unlock()
    config.seq_len = s["seq_len"]
    m = config.model
    m.vocab_size = 264  # 256 bytes + Untie the Knots' 7 markers (same model for every recipe)
    m.d_model, m.num_layers, m.num_heads, m.num_kv_heads = s["d_model"], s["layers"], s["heads"], 2
    m.head_dim, m.mlp_dim = s["d_model"] // s["heads"], s["mlp"]
    m.attention.impl = "xla"
    d = config.data
    toy = s is SETTINGS["toy"]
    d.corpus = TOY_CORPUS if toy else "stdlib_files"
    d.cache_dir = cache_dir
    d.batch_size = s["batch"]
    d.eval_fraction = 0.25 if toy else 0.1
    d.length_mix = ((0, 0.4), (1024 if toy else 4 * s["seq_len"], 0.6))
    d.decomposition_min = 32 if s["seq_len"] >= 64 else 16
    for key, value in RECIPES[name].items():
        d[key] = value
    t = config.train
    t.num_steps = s["steps"]
    t.warmup_steps = max(1, s["steps"] // 10)
    t.log_every = max(1, s["steps"] // 6)
    t.eval_every = s["steps"]
    t.eval_batches = 4
    t.checkpoint_every = s["steps"]
    t.max_checkpoints = 1
    t.peak_flops = 1e9  # no matmul benchmark at start (MFU is not reported here)
    e = config.eval
    e.lengths = tuple(s["seq_len"] * f for f in (1, 2, 4))
    e.tasks = ("perplexity", "passkey", "niah_single_1")
    e.depths = (0.0, 0.5, 1.0)
    e.samples_per_cell = s["n"]
    e.num_documents = s["docs"]
    e.label = name
    return config_lib.validate(config)


def register_toy_corpus() -> None:
    from lcm.data import CORPORA, corpora

    if TOY_CORPUS not in CORPORA:
        CORPORA.register(TOY_CORPUS)(
            lambda data: corpora.stdlib_files_corpus(packages=TOY_PACKAGES)
        )


def run_recipe(name: str, setting: dict, workdir: pathlib.Path, cache_dir, log) -> dict:
    from lcm.eval import runner
    from lcm.train import loop

    config = make_config(name, setting, cache_dir)
    shutil.rmtree(workdir, ignore_errors=True)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    last = loop.train(config, str(workdir), log=lambda msg: log(f"  [{name}] {msg}"))
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    results = runner.evaluate(config, str(workdir), log=lambda msg: log(f"  [{name}] {msg}"))
    eval_s = time.perf_counter() - start
    scores = {}
    for task, record in results["tasks"].items():
        cells = [c for c in record["cells"] if c["score"] is not None]
        scores[task] = {
            n: _mean([c["score"] for c in cells if c["length"] == n]) for n in config.eval.lengths
        }
    return {
        "recipe": name,
        "data": dict(RECIPES[name]),
        "train_loss": last.get("loss"),
        "eval_loss": last.get("eval_loss"),
        "perplexity": {r["length"]: r["perplexity"] for r in results["perplexity"]["results"]},
        "scores": scores,
        "train_s": train_s,
        "eval_s": eval_s,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def sliding_report(args, setting_name, setting, command, commit) -> int:
    """Re-evaluates the trained runs under ``--workdir`` with the ``sliding`` protocol."""
    from lcm.eval import runner

    lines = [
        "# Data recipes: perplexity under the sliding protocol",
        "",
        f"The `{setting_name}` runs of `data_recipes.md` (same checkpoints), perplexity only, "
        "`sliding` protocol (stride L/8): every length scores the same first 4x L bytes of each "
        "held-out file, most targets with L - stride bytes of context, so a row that starts at a "
        "file start no longer matches the test distribution better than one that starts "
        "mid-file (`truncate` scores from position 0).",
        "",
        "| recipe | " + " | ".join(f"ppl@{n}" for n in _lengths(setting)) + " | eval s | load |",
        "|" + "---|" * (len(_lengths(setting)) + 3),
    ]
    rows = []
    for recipe in args.recipes:
        config = make_config(recipe, setting, args.cache_dir)
        config.eval.protocol = "sliding"
        config.eval.tasks = ("perplexity",)
        config.eval.label = f"{recipe}_sliding"
        start, load = time.perf_counter(), os.getloadavg()[0]
        results = runner.evaluate(config, str(pathlib.Path(args.workdir) / recipe), log=print)
        ppl = {r["length"]: r["perplexity"] for r in results["perplexity"]["results"]}
        rows.append({"recipe": recipe, "perplexity": ppl, "eval_s": time.perf_counter() - start})
        lines.append(
            f"| {recipe} | "
            + " | ".join(f"{ppl[n]:.2f}" for n in _lengths(setting))
            + f" | {rows[-1]['eval_s']:.0f} | {load:.2f} |"
        )
    ranked = sorted(rows, key=lambda r: r["perplexity"][_lengths(setting)[-1]])
    lines += [
        "",
        f"Ordering by ppl@{_lengths(setting)[-1]}: " + " < ".join(r["recipe"] for r in ranked),
        "",
        f"- command: `{command}`",
        f"- commit: `{commit}`",
        "",
    ]
    out = pathlib.Path(args.out)
    (out / "data_recipes_sliding.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "data_recipes_sliding.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


def _lengths(setting: dict) -> list[int]:
    return [setting["seq_len"] * f for f in (1, 2, 4)]


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def plot(rows: list[dict], lengths, path: pathlib.Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for r in rows:
        axes[0].plot(lengths, [r["perplexity"][n] for n in lengths], marker="o", label=r["recipe"])
    axes[0].set(xscale="log", yscale="log", xlabel="evaluation length (bytes)")
    axes[0].set(ylabel="perplexity (truncate)", title="held-out perplexity vs length")
    axes[0].set_xticks(lengths, [str(n) for n in lengths])
    axes[0].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0].axvline(lengths[0], color="grey", lw=0.5)
    axes[0].legend(fontsize=8)
    width = 0.8 / len(rows)
    for t, task in enumerate(("passkey", "niah_single_1")):
        ax = axes[1 + t]
        for i, r in enumerate(rows):
            xs = [j + i * width for j in range(len(lengths))]
            ax.bar(xs, [r["scores"][task][n] or 0 for n in lengths], width, label=r["recipe"])
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(lengths))], [str(n) for n in lengths])
        ax.set(ylim=(0, 100), xlabel="length (bytes)", ylabel="exact match (%)", title=task)
        if not any(r["scores"][task][n] for r in rows for n in lengths):
            ax.text(0.5, 0.5, "every recipe scored 0", transform=ax.transAxes, ha="center")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(rows, setting_name, setting, command, commit, path: pathlib.Path, total_s) -> None:
    lengths = sorted(rows[0]["perplexity"])
    cores = os.cpu_count()
    lines = [
        "# Long-context data recipes at an equal token budget",
        "",
        f"Setting `{setting_name}`: {setting}. One RoPE model (vocab 264, xla attention), trained "
        f"from the same initialization for {setting['steps']} steps x {setting['batch']} x "
        f"{setting['seq_len']} = {setting['steps'] * setting['batch'] * setting['seq_len']:,} "
        "tokens per recipe on `stdlib_files` (held-out packages for evaluation). Perplexity: "
        "`truncate` protocol on the first held-out files longer than 4x the training length; "
        "passkey / niah_single_1: exact match (%) over depths 0, 0.5, 1 ('-': the prompt does "
        "not fit). `train loss`: the last step's (a recipe's own rows, not comparable across "
        "recipes). `held-out loss`: the training loop's loss (nats/byte) on held-out batches "
        "built by the plain pipeline with the run's own `packing` / `document_masking`, so it "
        "is comparable only within {chunk, structured} (concat, no masking), {packed, "
        "concat_by_repo} (best_fit, masked) and {untie_knots, decomposition} (first_fit, "
        "masked); the perplexity columns compare every recipe on the same held-out files.",
        "",
        "| recipe | train loss | held-out loss | "
        + " | ".join(f"ppl@{n}" for n in lengths)
        + " | "
        + " | ".join(f"passkey@{n}" for n in lengths)
        + " | "
        + " | ".join(f"niah@{n}" for n in lengths)
        + " | train s | eval s | load 1m before/after |",
        "|" + "---|" * (3 + 3 * len(lengths) + 3),
    ]

    def fmt(x, spec):
        return "-" if x is None else format(x, spec)

    for r in rows:
        lines.append(
            f"| {r['recipe']} | {fmt(r['train_loss'], '.3f')} | {fmt(r['eval_loss'], '.3f')} | "
            + " | ".join(fmt(r["perplexity"][n], ".2f") for n in lengths)
            + " | "
            + " | ".join(fmt(r["scores"]["passkey"][n], ".0f") for n in lengths)
            + " | "
            + " | ".join(fmt(r["scores"]["niah_single_1"][n], ".0f") for n in lengths)
            + f" | {r['train_s']:.0f} | {r['eval_s']:.0f} | "
            f"{r['load_before']:.2f} / {r['load_after']:.2f} |"
        )
    ranked = sorted(rows, key=lambda r: r["perplexity"][lengths[-1]])
    lines += [
        "",
        f"Ordering by ppl@{lengths[-1]} (lower is better): "
        + " < ".join(r["recipe"] for r in ranked)
        + ".",
        "",
        "![perplexity and retrieval per recipe](data_recipes.png)",
        "",
        f"- command: `{command}`",
        f"- commit: `{commit}`",
        f"- machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{cores} cores, Python {platform.python_version()}; shared, so wall times depend on load",
        f"- total wall time: {total_s:.0f} s",
        "",
        "Recipe data settings: " + json.dumps({r["recipe"]: r["data"] for r in rows}),
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--full", action="store_true", help="the larger, 5x longer setting")
    group.add_argument("--toy", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--out", default=str(REPO / "experiments" / "results"))
    parser.add_argument("--workdir", default=None, help="run directories (default: a temp dir)")
    parser.add_argument("--cache_dir", default=None, help="token cache (default ~/.cache/lcm)")
    parser.add_argument(
        "--sliding",
        action="store_true",
        help="only re-evaluate the runs in --workdir (trained before) with the sliding protocol",
    )
    args = parser.parse_args(argv)
    if args.sliding and not args.workdir:
        parser.error("--sliding needs --workdir: the directory of the trained runs")
    name = "full" if args.full else "toy" if args.toy else "default"
    setting = SETTINGS[name]
    register_toy_corpus()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="data_recipes_"))
    command = "python experiments/data_recipes.py" + (
        f" {' '.join(argv if argv is not None else sys.argv[1:])}"
    )
    dirty = _git("status", "--porcelain", "--", ".", ":!experiments/results")
    commit = _git("rev-parse", "HEAD") + (" (uncommitted changes)" if dirty else "")
    if args.sliding:
        return sliding_report(args, name, setting, command.strip(), commit)
    start = time.perf_counter()
    rows = []
    for recipe in args.recipes:
        print(f"== {recipe}", flush=True)
        rows.append(run_recipe(recipe, setting, work / recipe, args.cache_dir, print))
        print(json.dumps(rows[-1]), flush=True)
    total = time.perf_counter() - start
    (out / "data_recipes.json").write_text(json.dumps(rows, indent=1) + "\n")
    plot(rows, sorted(rows[0]["perplexity"]), out / "data_recipes.png")
    write_report(rows, name, setting, command.strip(), commit, out / "data_recipes.md", total)
    print(f"wrote {out / 'data_recipes.md'} and {out / 'data_recipes.png'} in {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
