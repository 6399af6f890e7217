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

The configs are ``experiments/data_recipes/configs.py:<recipe>[,<setting>]``. Writes
``<out>/data_recipes.json`` (every run's numbers and the provenance), ``data_recipes.md`` (table,
provenance) and ``data_recipes.png`` (``--out`` default: ``experiments/data_recipes/results``);
per-run workdirs go under ``--workdir``. The default setting is sized for about 12 minutes on a
quiet 2-core CPU; ``--full`` trains a larger model 5x longer. ``--sliding`` re-evaluates trained
runs with the ``sliding`` protocol into ``data_recipes_sliding.{json,md}``.

    .venv/bin/python -m experiments.data_recipes.run                     # default setting
    .venv/bin/python -m experiments.data_recipes.run --full              # the full setting
    .venv/bin/python -m experiments.data_recipes.run --toy --out /tmp/x  # seconds; the smoke test
    .venv/bin/python -m experiments.data_recipes.run --from-results      # re-render md + png
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

from experiments import common
from experiments.data_recipes import configs
from experiments.data_recipes.configs import RECIPES, SETTINGS

MODULE = "experiments.data_recipes.run"
NAME = "data_recipes"


def make_config(name: str, setting_name: str, cache_dir: str | None):
    """``configs.get_config("<name>,<setting_name>")`` with the token cache, validated."""
    from lcm import config as config_lib

    config = configs.get_config(f"{name},{setting_name}")
    config.data.cache_dir = cache_dir
    return config_lib.validate(config)


def run_recipe(name: str, setting_name: str, workdir: pathlib.Path, cache_dir, log) -> dict:
    from lcm.eval import runner
    from lcm.train import loop

    config = make_config(name, setting_name, cache_dir)
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


def sliding_run(args, setting_name: str, provenance: common.Provenance) -> None:
    """Re-evaluates the trained runs under ``--workdir`` with the ``sliding`` protocol."""
    from lcm.eval import runner

    rows = []
    for recipe in args.recipes:
        config = make_config(recipe, setting_name, args.cache_dir)
        config.eval.protocol = "sliding"
        config.eval.tasks = ("perplexity",)
        config.eval.label = f"{recipe}_sliding"
        start, load = time.perf_counter(), os.getloadavg()[0]
        results = runner.evaluate(config, str(pathlib.Path(args.workdir) / recipe), log=print)
        ppl = {r["length"]: r["perplexity"] for r in results["perplexity"]["results"]}
        eval_s = time.perf_counter() - start
        rows.append({"recipe": recipe, "perplexity": ppl, "eval_s": eval_s, "load": load})
    data = {"setting": setting_name, "rows": rows, "provenance": provenance.finish()}
    common.write_json(args.out / f"{NAME}_sliding.json", data)
    print(render_sliding(common.read_json(args.out / f"{NAME}_sliding.json"), args.out))


def render_sliding(data: dict, out: pathlib.Path) -> str:
    """``<out>/data_recipes_sliding.md`` from its raw results; returns the text."""
    setting_name = data["setting"]
    lengths = _lengths(SETTINGS[setting_name])
    rows = [_int_keys(r) for r in data["rows"]]
    lines = [
        "# Data recipes: perplexity under the sliding protocol",
        "",
        f"The `{setting_name}` runs of `data_recipes.md` (same checkpoints), perplexity only, "
        "`sliding` protocol (stride L/8): every length scores the same first 4x L bytes of each "
        "held-out file, most targets with L - stride bytes of context, so a row that starts at a "
        "file start no longer matches the test distribution better than one that starts "
        "mid-file (`truncate` scores from position 0).",
        "",
        "| recipe | " + " | ".join(f"ppl@{n}" for n in lengths) + " | eval s | load |",
        "|" + "---|" * (len(lengths) + 3),
    ]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | "
            + " | ".join(f"{r['perplexity'][n]:.2f}" for n in lengths)
            + f" | {r['eval_s']:.0f} | {r['load']:.2f} |"
        )
    ranked = sorted(rows, key=lambda r: r["perplexity"][lengths[-1]])
    lines += [
        "",
        f"Ordering by ppl@{lengths[-1]}: " + " < ".join(r["recipe"] for r in ranked),
        "",
        "## Provenance",
        "",
        common.provenance_markdown(data["provenance"]),
        "",
    ]
    text = "\n".join(lines)
    (out / f"{NAME}_sliding.md").write_text(text)
    return text


def _int_keys(row: dict) -> dict:
    """A result row with its per-length dicts keyed by int (JSON keys are strings)."""
    row = dict(row)
    row["perplexity"] = {int(n): v for n, v in row["perplexity"].items()}
    if "scores" in row:
        row["scores"] = {
            task: {int(n): v for n, v in by_length.items()}
            for task, by_length in row["scores"].items()
        }
    return row


def _lengths(setting: dict) -> list[int]:
    return [setting["seq_len"] * f for f in (1, 2, 4)]


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


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


def render(data: dict, out: pathlib.Path) -> str:
    """``<out>/data_recipes.{md,png}`` from the raw results; returns the markdown."""
    setting_name = data["setting"]
    setting = SETTINGS[setting_name]
    rows = [_int_keys(r) for r in data["rows"]]
    plot(rows, sorted(rows[0]["perplexity"]), out / f"{NAME}.png")
    lengths = sorted(rows[0]["perplexity"])
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
        "Recipe data settings: " + json.dumps({r["recipe"]: r["data"] for r in rows}),
        "",
        "## Provenance",
        "",
        common.provenance_markdown(data["provenance"]),
        "",
    ]
    text = "\n".join(lines)
    (out / f"{NAME}.md").write_text(text)
    return text


def main(argv=None) -> int:
    parser = common.study_parser(__doc__.split("\n\n")[0], NAME)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--full", action="store_true", help="the larger, 5x longer setting")
    group.add_argument("--toy", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--workdir", default=None, help="run directories (default: a temp dir)")
    parser.add_argument("--cache_dir", default=None, help="token cache (default ~/.cache/lcm)")
    parser.add_argument(
        "--sliding",
        action="store_true",
        help="only re-evaluate the runs in --workdir (trained before) with the sliding protocol",
    )
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.from_results:
        render(common.read_json(args.out / f"{NAME}.json"), args.out)
        if (args.out / f"{NAME}_sliding.json").exists():
            render_sliding(common.read_json(args.out / f"{NAME}_sliding.json"), args.out)
        return 0
    if args.sliding and not args.workdir:
        parser.error("--sliding needs --workdir: the directory of the trained runs")
    name = "full" if args.full else "toy" if args.toy else "default"
    configs.register_toy_corpus()
    args.out.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="data_recipes_"))
    provenance = common.Provenance(MODULE, argv)
    if args.sliding:
        sliding_run(args, name, provenance)
        return 0
    rows = []
    for recipe in args.recipes:
        print(f"== {recipe}", flush=True)
        rows.append(run_recipe(recipe, name, work / recipe, args.cache_dir, print))
        print(json.dumps(rows[-1]), flush=True)
    data = {"setting": name, "rows": rows, "provenance": provenance.finish()}
    common.write_json(args.out / f"{NAME}.json", data)
    render(common.read_json(args.out / f"{NAME}.json"), args.out)
    print(f"wrote {args.out / 'data_recipes.md'} and {args.out / 'data_recipes.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
