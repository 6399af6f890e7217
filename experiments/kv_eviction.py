"""KV-cache eviction: passkey / NIAH accuracy and cache memory versus budget, per policy.

Trains a small model on the ``synthetic_tasks`` corpus (passkey and RULER-style prompts with
their answers) inside the script, then scores ``passkey`` and ``niah_single_1`` at the training
length with cached greedy decoding (``lcm.inference.generate``) under each eviction policy
(``streaming_llm``, ``h2o``, ``snapkv``, ``caote`` on ``h2o``) and budget, plus the full cache.
Writes ``experiments/results/kv_eviction.md`` (table, command, commit, machine, wall time),
``kv_eviction.png`` and ``kv_eviction.json``.

    .venv/bin/python experiments/kv_eviction.py            # default: ~15 min on a 2-core CPU
    .venv/bin/python experiments/kv_eviction.py --steps 20 --samples 1 --budgets 64 --out /tmp/k
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lcm import config as config_lib  # noqa: E402
from lcm import model as model_lib  # noqa: E402
from lcm.data.tokenizers import ByteTokenizer  # noqa: E402
from lcm.eval import runner, tasks  # noqa: E402
from lcm.inference import cache as cache_lib  # noqa: E402
from lcm.inference import decoding  # noqa: E402
from lcm.train import loop  # noqa: E402

POLICIES = ("streaming_llm", "h2o", "snapkv", "caote")
TASKS = ("passkey", "niah_single_1")


def make_config(args) -> object:
    config = config_lib.load_config(str(REPO / "configs" / "base.py"))
    config.seq_len = config.data.seq_len = args.seq_len
    config.model.d_model = 128
    config.model.num_layers = 2
    config.model.num_heads = 4
    config.model.num_kv_heads = 2
    config.model.head_dim = 32
    config.model.mlp_dim = 256
    config.model.attention.impl = "xla"
    config.data.corpus = "synthetic_tasks"
    config.data.batch_size = args.batch_size
    config.data.eval_fraction = 0.05
    config.train.num_steps = args.steps
    config.train.warmup_steps = min(30, args.steps // 5)
    config.train.learning_rate = 3e-3
    config.train.log_every = max(1, args.steps // 10)
    config.train.eval_every = 0
    config.train.checkpoint_every = args.steps
    config.mesh.shape = (1, 1, 1, 1)
    config.eval.init = "checkpoint"
    config.inference.prefill_chunk = args.prefill_chunk
    config.inference.recent = args.recent
    config.inference.snapkv_window = args.recent
    config.inference.sink = 4
    return config


def score(config, params, logprob, task, args) -> float:
    decode = tasks.make_decode_fn(params, config)
    record = tasks.run_task(
        task,
        logprob,
        decode,
        params,
        ByteTokenizer(),
        lengths=(args.seq_len,),
        depths=args.depths,
        samples_per_cell=args.samples,
        seed=args.seed,
    )
    scores = [c["score"] for c in record["cells"] if c["score"] is not None]
    return float(np.mean(scores)) if scores else float("nan")


def cache_bytes(config, params, budget) -> int:
    policy = None if budget is None else "h2o"
    decoder = decoding.make_decoder(config, cache_policy=policy, budget=budget)
    cache = decoder.new_cache(params, batch=1, prompt_len=config.seq_len, max_new_tokens=8)
    return cache_lib.num_bytes(cache)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="training steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512, help="training and task length")
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--recent", type=int, default=16, help="h2o recent / snapkv window")
    parser.add_argument("--prefill-chunk", type=int, default=64)
    parser.add_argument("--samples", type=int, default=2, help="samples per depth")
    parser.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--seed", type=int, default=1, help="task sample seed")
    parser.add_argument("--workdir", default=None, help="training dir (default: a temp dir)")
    parser.add_argument("--out", default=str(REPO / "experiments" / "results"))
    args = parser.parse_args()
    start = time.perf_counter()
    config = make_config(args)
    workdir = args.workdir or tempfile.mkdtemp(prefix="kv_eviction_")
    train_start = time.perf_counter()
    metrics = loop.train(config, workdir, log=lambda s: print(s, flush=True))
    train_s = time.perf_counter() - train_start
    model = model_lib.Transformer(model_lib.build_spec(config))
    params, step = runner.load_params(config, workdir, model)
    params = jax.tree.map(np.asarray, params)
    unscanned = decoding.unscan_params(params)
    logprob = tasks.make_logprob_fn(model)  # the answer's NLL (unused here), jitted once

    rows = []
    settings = [("full", None)] + [(p, b) for b in args.budgets for p in POLICIES]
    for policy, budget in settings:
        config.inference.cache_policy = None if policy == "full" else policy
        config.inference.budget = budget
        row = {"policy": policy if policy != "caote" else "caote (h2o)", "budget": budget}
        t0 = time.perf_counter()
        for task in TASKS:
            row[task] = score(config, params, logprob, task, args)
        row["cache_bytes"] = cache_bytes(config, unscanned, budget)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
    wall = time.perf_counter() - start
    write(args, rows, metrics, step, train_s, wall)


def write(args, rows, metrics, step, train_s, wall) -> None:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    command = "python experiments/kv_eviction.py " + " ".join(sys.argv[1:])
    machine = f"{platform.machine()} {platform.processor() or ''}, {jax.devices()[0]}".strip()
    samples = args.samples * len(args.depths)
    lines = [
        "# KV-cache eviction: accuracy and memory vs budget",
        "",
        f"- command: `{command.strip()}`",
        f"- commit: {commit}; machine: {machine}; wall time {wall / 60:.1f} min "
        f"(training {train_s / 60:.1f} min)",
        f"- model: 2 layers, d_model 128, 4 heads / 2 kv heads, RoPE, trained {step} steps "
        f"(batch {args.batch_size} x {args.seq_len} tokens) on the synthetic_tasks corpus; "
        f"final train loss {metrics.get('loss', float('nan')):.3f}",
        f"- tasks at length {args.seq_len} (the training length), {samples} samples each "
        f"(depths {args.depths}); greedy cached decoding; prefill chunk {args.prefill_chunk}; "
        f"sink 4, h2o recent = snapkv window = {args.recent}, snapkv kernel 7",
        "- cache bytes: all layers' K, V, positions, segment ids (+ policy scores); with a "
        "policy the cache has budget + prefill_chunk slots and holds at most budget tokens "
        "after every step",
        "",
        "| policy | budget | passkey | niah_single_1 | cache bytes |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        budget = "full" if r["budget"] is None else r["budget"]
        lines.append(
            f"| {r['policy']} | {budget} | {r['passkey']:.1f} | {r['niah_single_1']:.1f} | "
            f"{r['cache_bytes']:,} |"
        )
    (out / "kv_eviction.md").write_text("\n".join(lines) + "\n")
    (out / "kv_eviction.json").write_text(json.dumps({"args": vars(args), "rows": rows}) + "\n")
    plot(rows, out / "kv_eviction.png")
    print(f"wrote {out / 'kv_eviction.md'}")


def plot(rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TASKS), figsize=(10, 4), sharey=True)
    full = next(r for r in rows if r["budget"] is None)
    budgets = [r["budget"] for r in rows if r["budget"] is not None]
    for ax, task in zip(axes, TASKS, strict=True):
        for policy in sorted({r["policy"] for r in rows if r["budget"] is not None}):
            pts = [(r["budget"], r[task]) for r in rows if r["policy"] == policy]
            ax.plot(*zip(*pts, strict=True), marker="o", label=policy)
        ax.axhline(full[task], color="k", linestyle="--", label="full cache")
        ax.set_xscale("log", base=2)
        ax.set_xlim(min(budgets) / 1.5, max(budgets) * 1.5)
        ax.set_ylim(-5, 105)
        ax.set_xlabel("cache budget (tokens)")
        ax.set_title(task)
    axes[0].set_ylabel("score (0-100)")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
