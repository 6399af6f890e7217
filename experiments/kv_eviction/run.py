"""KV-cache eviction: passkey / NIAH accuracy and cache memory versus budget, per policy.

Trains a small model inside the script on freshly generated samples of the tasks (prompt plus
answer; the loss weighs answer tokens 1 and the rest ``--context-weight``, default 0: with 0.1,
~250 easy filler tokens outweigh the 7 answer tokens and the 2-layer model had not learned to
retrieve the key after 400 steps, while with the answer-only loss it had), then scores the
tasks at the training length with cached greedy decoding (``lcm.inference.generate``) under
each eviction policy (``streaming_llm``, ``h2o``, ``snapkv``, ``caote`` on ``h2o``) and
budget, plus the full cache.
Evaluation samples use another seed than training samples.
Writes ``experiments/kv_eviction/results/kv_eviction.json`` (the arguments, every row, the
training loss and time, the provenance), ``kv_eviction.md`` (table, provenance) and
``kv_eviction.png``.

    .venv/bin/python -m experiments.kv_eviction.run       # default: ~10 min on a quiet 2-core CPU
    .venv/bin/python -m experiments.kv_eviction.run --steps 20 --samples 1 --budgets 64 --out /tmp/k
    .venv/bin/python -m experiments.kv_eviction.run --from-results  # re-render md + png
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import common
from lcm import config as config_lib
from lcm import model as model_lib
from lcm.data import synthetic
from lcm.data.tokenizers import ByteTokenizer
from lcm.eval import perplexity, tasks
from lcm.inference import cache as cache_lib
from lcm.inference import decoding

MODULE = "experiments.kv_eviction.run"
NAME = "kv_eviction"

POLICIES = ("streaming_llm", "h2o", "snapkv", "caote")
TRAIN_SEED = 1000  # task-sample seed of the training data (evaluation uses --seed)


def make_config(args) -> object:
    config = config_lib.base_config()
    config.seq_len = config.data.seq_len = args.seq_len
    config.model.d_model = 128
    config.model.num_layers = 2
    config.model.num_heads = 4
    config.model.num_kv_heads = 2
    config.model.head_dim = 32
    config.model.mlp_dim = 256
    config.model.attention.impl = "xla"
    config.inference.prefill_chunk = args.prefill_chunk
    config.inference.recent = args.recent
    config.inference.snapkv_window = args.recent
    config.inference.sink = 4
    return config


def batch(tasks_, step: int, args) -> tuple[np.ndarray, np.ndarray]:
    """Tokens ``[B, L]`` (prompt, answer, newline, zeros) and loss weights for the next token."""
    tokens = np.zeros((args.batch_size, args.seq_len), np.int32)
    weights = np.zeros((args.batch_size, args.seq_len), np.float32)
    rng = np.random.default_rng(step)
    for i in range(args.batch_size):
        task = tasks_[i % len(tasks_)]
        index = step * args.batch_size + i
        sample = synthetic.make_sample(
            task, length=args.seq_len, depth=rng.random(), index=index, seed=TRAIN_SEED
        )
        prompt = list(sample.prompt.encode())
        answer = list((sample.target + "\n").encode())
        row = (prompt + answer)[: args.seq_len]
        tokens[i, : len(row)] = row
        # weights[t] scores the prediction of token t + 1.
        weights[i, : len(row) - 1] = args.context_weight
        weights[i, len(prompt) - 1 : len(row) - 1] = 1.0
    return tokens, weights


def train(config, args, log=print):
    """AdamW on fresh task samples; returns ``(params, last loss)``."""
    model = model_lib.Transformer(model_lib.build_spec(config))
    positions = jnp.arange(args.seq_len, dtype=jnp.int32)[None]
    dummy = jnp.zeros((1, args.seq_len), jnp.int32)
    params = nn.unbox(model.init(jax.random.key(0), dummy, positions)["params"])
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, args.learning_rate, max(1, args.steps // 10), args.steps, args.learning_rate / 10
    )
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
    opt_state = tx.init(params)

    def loss_fn(params, tokens, weights):
        logits = model.apply({"params": params}, tokens, jnp.broadcast_to(positions, tokens.shape))
        nll = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:])
        return (nll * weights[:, :-1]).sum() / weights[:, :-1].sum()

    @jax.jit
    def step(params, opt_state, tokens, weights):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, weights)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for i in range(args.steps):
        tokens, weights = batch(args.tasks, i, args)
        params, opt_state, loss = step(params, opt_state, tokens, weights)
        losses.append(float(loss))
        if (i + 1) % max(1, args.steps // 10) == 0:
            log(f"step {i + 1}/{args.steps} | weighted loss {np.mean(losses[-20:]):.4f}")
    return params, float(np.mean(losses[-20:]))


def score(config, params, nll_fn, task, args) -> float:
    decode = tasks.make_decode_fn(params, config)
    record = tasks.run_task(
        task,
        nll_fn,
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


def main(argv=None) -> None:
    parser = common.study_parser(__doc__.split("\n")[0], NAME)
    parser.add_argument("--steps", type=int, default=600, help="training steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--context-weight", type=float, default=0.0, help="non-answer loss weight")
    parser.add_argument("--seq-len", type=int, default=256, help="training and task length")
    parser.add_argument("--tasks", nargs="+", default=["passkey"], help="synthetic tasks")
    parser.add_argument("--budgets", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--recent", type=int, default=16, help="h2o recent / snapkv window")
    parser.add_argument("--prefill-chunk", type=int, default=64)
    parser.add_argument("--samples", type=int, default=2, help="samples per depth")
    parser.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--seed", type=int, default=1, help="task sample seed")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.from_results:
        render(common.read_json(args.out / f"{NAME}.json"), args.out)
        return
    provenance = common.Provenance(MODULE, argv)
    config = make_config(args)
    train_start = time.perf_counter()
    params, loss = train(config, args, log=lambda s: print(s, flush=True))
    train_s = time.perf_counter() - train_start
    model = model_lib.Transformer(model_lib.build_spec(config))
    unscanned = decoding.unscan_params(params)
    nll_fn = perplexity.make_nll_fn(model)  # the answer's NLL (unused here), jitted once

    rows = []
    settings = [("full", None)] + [(p, b) for b in args.budgets for p in POLICIES]
    for policy, budget in settings:
        config.inference.cache_policy = None if policy == "full" else policy
        config.inference.budget = budget
        row = {"policy": policy if policy != "caote" else "caote (h2o)", "budget": budget}
        t0 = time.perf_counter()
        for task in args.tasks:
            row[task] = score(config, params, nll_fn, task, args)
        row["cache_bytes"] = cache_bytes(config, unscanned, budget)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "args": {k: v for k, v in vars(args).items() if k not in ("out", "from_results")},
        "rows": rows,
        "loss": loss,
        "train_s": train_s,
        "provenance": provenance.finish(),
    }
    common.write_json(out / f"{NAME}.json", data)
    render(common.read_json(out / f"{NAME}.json"), out)
    print(f"wrote {out / 'kv_eviction.md'}")


def render(data: dict, out: pathlib.Path) -> None:
    """``<out>/kv_eviction.{md,png}`` from the raw results."""
    args = argparse.Namespace(**data["args"])
    rows, loss, train_s = data["rows"], data["loss"], data["train_s"]
    samples = args.samples * len(args.depths)
    lines = [
        "# KV-cache eviction: accuracy and memory vs budget",
        "",
        f"- model: 2 layers, d_model 128, 4 heads / 2 kv heads, RoPE, trained {args.steps} "
        f"steps (batch {args.batch_size} x {args.seq_len} tokens) on fresh {args.tasks} "
        f"samples (answer weight 1, context weight {args.context_weight}); final weighted "
        f"loss {loss:.3f}; training {train_s / 60:.1f} min",
        f"- tasks at length {args.seq_len} (the training length), {samples} samples each "
        f"(depths {args.depths}); greedy cached decoding; prefill chunk {args.prefill_chunk}; "
        f"sink 4, h2o recent = snapkv window = {args.recent}, snapkv kernel 7",
        "- cache bytes: all layers' K, V, positions, segment ids (+ policy scores); with a "
        "policy the cache has budget + prefill_chunk slots and holds at most budget tokens "
        "after every step",
        "",
        "| policy | budget | " + " | ".join(args.tasks) + " | cache bytes |",
        "|---" * (len(args.tasks) + 3) + "|",
    ]
    for r in rows:
        budget = "full" if r["budget"] is None else r["budget"]
        cells = " | ".join(f"{r[t]:.1f}" for t in args.tasks)
        lines.append(f"| {r['policy']} | {budget} | {cells} | {r['cache_bytes']:,} |")
    lines += ["", "## Provenance", "", common.provenance_markdown(data["provenance"])]
    (out / f"{NAME}.md").write_text("\n".join(lines) + "\n")
    plot(rows, args.tasks, out / f"{NAME}.png")


def plot(rows, tasks_, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks_), figsize=(5 * len(tasks_), 4), squeeze=False)
    axes = axes[0]
    full = next(r for r in rows if r["budget"] is None)
    budgets = [r["budget"] for r in rows if r["budget"] is not None]
    for ax, task in zip(axes, tasks_, strict=True):
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
