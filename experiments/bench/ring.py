"""Ring attention benchmark on 8 simulated CPU devices; prints one JSON line per case.

    .venv/bin/python -m experiments.bench.ring [--seq 4096] [--mem-seq 65536] [--reps 3]

Timing: B=1, N=8, H=64, causal, float32, mesh (context=8), each token layout; fwd and fwd+bwd
medians of the jitted call (compile excluded). Memory: per-device bytes XLA reserves for the
compiled fwd+bwd program (``compiled.memory_analysis()``: arguments + outputs + temporaries),
ring over 8 devices vs blockwise on 1 device at ``--mem-seq`` (compiled, not run).
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse
import json

import jax
import numpy as np

from experiments.bench import timing
from lcm import attention
from lcm.attention import layouts
from lcm.parallel import mesh as mesh_lib
from lcm.parallel import sharding

N, H = 8, 64


def fns(impl, block):
    """Jitted ``(fwd, fwd_bwd)`` of causal attention with ``impl``; ``fwd_bwd`` returns dq, dk, dv.

    Arguments are ``(q, k, v, pos)`` or ``(q, k, v, pos, segment_ids)``. Pass segment ids (as
    training does) when compiling long sequences: without them the implementation's all-ones
    segment ids are constants that XLA folds at compile time, which takes minutes at long T.
    Ring runs over the mesh in context (``sharding.use_mesh``).
    """

    def fwd(q, k, v, pos, seg=None):
        return attention.attend(
            q, k, v, mask=attention.Causal(), impl=impl, q_pos=pos, k_pos=pos,
            q_segment_ids=seg, kv_segment_ids=seg, block_q=block, block_kv=block,
        )  # fmt: skip

    def fwd_bwd(q, k, v, *rows):
        return jax.grad(lambda q, k, v: fwd(q, k, v, *rows).sum(), argnums=(0, 1, 2))(q, k, v)

    return jax.jit(fwd), jax.jit(fwd_bwd)


def inputs(t, layout, shards, segments=False):
    """Random q, k, v ``[1, t, N, H]`` float32 and positions ``[1, t]`` (and all-ones segment
    ids when ``segments``), in ``layout`` order."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, t, N, H), dtype=np.float32) for _ in range(3))
    rows = [np.arange(t, dtype=np.int32)[None]] + [np.ones((1, t), np.int32)] * segments
    return [layouts.permute(x, layout, shards) for x in (q, k, v, *rows)]


def per_device_bytes(fn, args) -> int:
    """Bytes XLA reserves per device for the compiled ``fn``: arguments + outputs + temporaries."""
    m = fn.lower(*args).compile().memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--mem-seq", type=int, default=65536)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    mesh = mesh_lib.make_mesh(
        {"axes": mesh_lib.MESH_AXES, "shape": (1, 1, 8, 1), "axis_types": "auto"}
    )
    common = {"B": 1, "N": N, "H": H, "dtype": "float32", "mask": "causal", "block": args.block}
    with sharding.use_mesh(mesh):
        fwd, fwd_bwd = fns("ring", args.block)
        for layout in layouts.FIXED:
            xs = inputs(args.seq, layout, 8)
            record = {"impl": "ring", "devices": 8, "layout": layout, "T": args.seq, **common}
            record["fwd_s"] = timing.median_seconds(fwd, xs, args.reps)
            record["fwd_bwd_s"] = timing.median_seconds(fwd_bwd, xs, args.reps)
            record["load"] = os.getloadavg()[0]
            print(json.dumps(record), flush=True)
        big = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in inputs(args.mem_seq, "zigzag", 8)]
        ring_bytes = per_device_bytes(fwd_bwd, big)
    one = mesh_lib.make_mesh(
        {"axes": mesh_lib.MESH_AXES, "shape": (1, 1, 1, 1), "axis_types": "auto"},
        devices=jax.devices()[:1],
    )
    with sharding.use_mesh(one):
        _, single = fns("blockwise", args.block)
        single_bytes = per_device_bytes(single, big)
    print(
        json.dumps(
            {
                "T": args.mem_seq, **common, "fwd_bwd_bytes_per_device_ring8": ring_bytes,
                "fwd_bwd_bytes_one_device_blockwise": single_bytes,
                "ratio": ring_bytes / single_bytes,
            }
        ),
        flush=True,
    )  # fmt: skip


if __name__ == "__main__":
    main()
