r"""Benchmark: sparse attention (MoBA, NSA) vs causal ``blockwise``, forward+backward.

Prints one JSON line per (impl, T): ``fwd_bwd_s`` is the median wall time of the compiled
``jit(value_and_grad)`` w.r.t. q, k, v over ``reps`` runs (compilation excluded; one run at
T >= 100k), and ``peak_rss_gib - base_rss_gib`` the resident memory the case added (each case
runs in its own subprocess; jax's CPU client reports no ``memory_stats()``). Then one
``summary`` line per T with each sparse method's speedup over causal blockwise. ``load`` is the
1-minute load average when the case started (the machine is shared).

Defaults: B=1, N=K=8, H=64, float32; MoBA with the paper's 8K-run setting (block 512, top-3,
arXiv 2502.13189); NSA with its published defaults (l=32, d=16, selection block 64, n=16,
window 512, arXiv 2502.11089) where available; blockwise with 128 tiles (its tuned default).

    .venv/bin/python -m experiments.bench.sparse
    .venv/bin/python -m experiments.bench.sparse --lengths 8192 --impls blockwise moba
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys

from experiments.bench import timing

_GIB = 2**30
IMPLS = ("blockwise", "moba", "nsa")


def _run_case(args: argparse.Namespace) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lcm import attention

    b, t, n, h = 1, args.length, args.heads, args.head_dim
    rng = np.random.default_rng(0)
    q, k, v, ct = (jnp.asarray(rng.standard_normal((b, t, n, h)), jnp.float32) for _ in range(4))
    pos = jnp.arange(t, dtype=jnp.int32)[None]
    causal = attention.Causal()
    if args.impl == "blockwise":

        def fwd(q, k, v):
            return attention.attend(q, k, v, mask=causal, impl="blockwise", q_pos=pos, k_pos=pos)
    elif args.impl == "moba":

        def fwd(q, k, v):
            return attention.attend(
                q, k, v, mask=causal, impl="moba", q_pos=pos, k_pos=pos,
                block_size=args.moba_block, top_k=args.moba_top_k,
            )  # fmt: skip
    else:
        from lcm.attention.sparse import nsa

        settings = nsa.NSASettings()
        x = jnp.asarray(rng.standard_normal((b, t, n * h)), jnp.float32)
        params = nsa.NSA(settings, n).init(jax.random.key(0), x, q, k, v, pos, pos)["params"]

        def fwd(q, k, v):
            return nsa.nsa_attention(params, x, q, k, v, settings=settings, q_pos=pos, k_pos=pos)

    def loss(q, k, v):
        return jnp.vdot(fwd(q, k, v), ct)

    grad_jit = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / _GIB
    compiled = grad_jit.lower(q, k, v).compile()
    seconds = timing.median_seconds(compiled, (q, k, v), args.reps, warm_up=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / _GIB
    return {
        "fwd_bwd_s": round(seconds, 3),
        "base_rss_gib": round(base, 3),
        "peak_rss_gib": round(peak, 3),
    }


def _case_line(args: argparse.Namespace, impl: str, length: int) -> dict:
    line = {"impl": impl, "T": length, "B": 1, "N": args.heads, "H": args.head_dim}
    if impl == "moba":
        line.update(block=args.moba_block, top_k=args.moba_top_k)
    line.update(
        dtype="float32",
        reps=args.reps if length < 100_000 else 1,
        load=round(os.getloadavg()[0], 2),
    )
    command = [
        sys.executable,
        "-m",
        __spec__.name,
        "--_case",
        f"--impls={impl}",
        f"--lengths={length}",
        f"--reps={line['reps']}",
        f"--heads={args.heads}",
        f"--head_dim={args.head_dim}",
        f"--moba_block={args.moba_block}",
        f"--moba_top_k={args.moba_top_k}",
    ]
    return timing.run_case(command, line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 131072])
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head_dim", type=int, default=64)
    parser.add_argument("--moba_block", type=int, default=512)
    parser.add_argument("--moba_top_k", type=int, default=3)
    parser.add_argument("--_case", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._case:
        args.impl, args.length = args.impls[0], args.lengths[0]
        print(json.dumps(_run_case(args)))
        return
    for length in args.lengths:
        times = {}
        for impl in args.impls:
            line = _case_line(args, impl, length)
            print(json.dumps(line), flush=True)
            times[impl] = line.get("fwd_bwd_s")
        if times.get("blockwise"):
            speedups = {
                f"{impl}_speedup": round(times["blockwise"] / s, 2)
                for impl, s in times.items()
                if impl != "blockwise" and s
            }
            print(json.dumps({"summary": True, "T": length, **speedups}), flush=True)


if __name__ == "__main__":
    main()
