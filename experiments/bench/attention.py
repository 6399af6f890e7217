r"""Benchmark: blockwise vs xla attention, forward and forward+backward time and peak memory.

Prints one JSON line per (impl, T, mask): ``fwd_s`` and ``fwd_bwd_s`` are median wall seconds
over ``reps`` runs of the compiled ``jit`` (compilation excluded; one run at T >= 100k, where a
run takes minutes), ``fwd_bwd_s`` timing ``value_and_grad`` w.r.t. q, k, v. Each case runs in
its own subprocess so that its peak resident memory (``ru_maxrss``: the high-water mark of the
whole process, compilation included) belongs to that case alone; ``base_rss_gib`` is the RSS
after jax started and the inputs were made, so ``peak_rss_gib - base_rss_gib`` is what
attention itself added. jax's CPU client reports no ``memory_stats()``, which is why RSS is
used.

Defaults are the issue's targets: B=1, N=K=8, H=64, float32, causal at T = 4096, 32768,
131072, and a sliding window of 1024 at T = 32768 (the ``tiles`` field counts the tiles
blockwise visits, for the cost-follows-tiles check). Cases xla cannot fit (dense
``[B, N, T, S]`` logits) are skipped with a reason. The machine is shared: ``load`` is the
1-minute load average when the case started.

    .venv/bin/python -m experiments.bench.attention
    .venv/bin/python -m experiments.bench.attention --lengths 4096 --windows 0 --impls blockwise \
        --block 256
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys

from experiments.bench import timing

_GIB = 2**30
# xla holds about this many [N, T, S] float32 arrays at its peak (logits, probabilities, and
# their cotangents); used only to skip cases that cannot fit.
_XLA_DENSE_ARRAYS = 4


def _run_case(args: argparse.Namespace) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lcm import attention
    from lcm.attention import masks, tiles

    b, t, n, h = 1, args.length, args.heads, args.head_dim
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((b, t, n, h)), jnp.float32) for _ in range(3))
    ct = jnp.asarray(rng.standard_normal((b, t, n, h)), jnp.float32)
    pos = jnp.arange(t, dtype=jnp.int32)[None]
    mask = masks.Causal() if args.window == 0 else masks.SlidingWindow(args.window)
    options = {"block_q": args.block, "block_kv": args.block} if args.impl == "blockwise" else {}

    def fwd(q, k, v):
        return attention.attend(q, k, v, mask=mask, impl=args.impl, q_pos=pos, k_pos=pos, **options)

    def loss(q, k, v):
        return jnp.vdot(fwd(q, k, v), ct)

    fwd_jit = jax.jit(fwd)
    grad_jit = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / _GIB

    def median_time(fn):
        fn = fn.lower(q, k, v).compile()  # compile only: a warm-up run at T = 131072 costs minutes
        return timing.median_seconds(fn, (q, k, v), args.reps, warm_up=False)

    result = {"fwd_s": median_time(fwd_jit), "fwd_bwd_s": median_time(grad_jit)}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / _GIB
    result.update(base_rss_gib=round(base, 3), peak_rss_gib=round(peak, 3))
    if args.impl == "blockwise":
        cq = min(args.block, t)
        ranges = tiles.block_ranges(pos, jnp.ones_like(pos), cq)
        visits = tiles.visit_lists(tiles.classify_tiles(mask, ranges, ranges))
        result.update(
            tiles=int(visits.full_count.sum() + visits.partial_count.sum()),
            tiles_total=(-(-t // cq)) ** 2,
        )
    return result


def _case_line(args: argparse.Namespace, impl: str, length: int, window: int) -> dict:
    line = {
        "impl": impl,
        "T": length,
        "mask": "causal" if window == 0 else f"sliding_window({window})",
        "B": 1,
        "N": args.heads,
        "H": args.head_dim,
        "dtype": "float32",
        "block": args.block if impl == "blockwise" else None,
        "reps": args.reps if length < 100_000 else 1,
        "load": round(os.getloadavg()[0], 2),
    }
    dense_gib = _XLA_DENSE_ARRAYS * args.heads * length * length * 4 / _GIB
    if impl == "xla" and dense_gib > args.memory_gib:
        line["skipped"] = f"xla needs about {dense_gib:.0f} GiB of dense logits"
        return line
    command = [
        sys.executable,
        "-m",
        __spec__.name,
        "--_case",
        f"--impl={impl}",
        f"--length={length}",
        f"--window={window}",
        f"--block={args.block}",
        f"--reps={line['reps']}",
        f"--heads={args.heads}",
        f"--head_dim={args.head_dim}",
    ]
    return timing.run_case(command, line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impls", nargs="+", default=["xla", "blockwise"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[4096, 32768, 131072])
    parser.add_argument("--windows", nargs="+", type=int, default=[0, 1024])
    parser.add_argument("--window_lengths", nargs="+", type=int, default=[32768])
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head_dim", type=int, default=64)
    parser.add_argument("--memory_gib", type=float, default=20.0)
    # Internal: run one case in this process and print its measurements.
    parser.add_argument("--_case", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", default="blockwise", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, default=4096, help=argparse.SUPPRESS)
    parser.add_argument("--window", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._case:
        print(json.dumps(_run_case(args)))
        return
    for length in args.lengths:
        for window in args.windows:
            if window and length not in args.window_lengths:
                continue
            for impl in args.impls:
                print(json.dumps(_case_line(args, impl, length, window)), flush=True)


if __name__ == "__main__":
    main()
