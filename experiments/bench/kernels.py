"""Benchmarks for kernels_pallas; prints one JSON line per measurement (never run by the tests).

    .venv/bin/python -m experiments.bench.kernels [--seq 1024 --heads 4 --head-dim 64 --block 128]

On CPU (no accelerator) it measures interpret-mode wall time of our flash kernel against jax's
bundled ``jax.experimental.pallas.ops.tpu.flash_attention`` at the same shape and block size,
both in Pallas TPU interpret mode and in jax's generic HLO interpreter, forward and
forward+backward; then tiles computed vs dense for causal and sliding-window masks. Interpret
times measure the simulator, not the kernels: they only show that ours is not pathologically
more expensive to run or to trace.

On a TPU it measures compiled TFLOP/s of our flash and block-sparse kernels, jax's flash kernel
and ``jax.nn.dot_product_attention``. On a GPU our kernels (TPU Mosaic only) cannot run; it
reports ``jax.nn.dot_product_attention`` ('xla' and 'cudnn') as the baseline a GPU port must
beat. FLOPs count only visible (q, k) pairs: forward ``4 * B * N * H * pairs`` (QK^T and PV),
backward 2.5x forward (five matmuls).
"""

from __future__ import annotations

import argparse
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas.ops.tpu import flash_attention as jax_flash

from experiments.bench import timing
from kernels_pallas.block_sparse import block_lists_from_mask, block_sparse_attention
from kernels_pallas.flash import BlockSizes, flash_attention
from kernels_pallas.mask import PositionalMask


def _emit(**fields):
    print(json.dumps(fields), flush=True)


def _inputs(b, n, t, h, dtype):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    return [jax.random.normal(key, (b, n, t, h), dtype) for key in keys]


def _with_grad(fn):
    """``(q, k, v) -> (dq, dk, dv)`` of ``sum(fn(q, k, v))``: one forward and one backward."""
    return jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32)), (0, 1, 2)))


def _visible_pairs(mask: PositionalMask, t: int) -> int:
    pos = np.arange(t)
    return int(np.asarray(mask.allows(pos[:, None], pos[None])).sum())


def _impls(causal, block, scale, interpret):
    """name -> (q, k, v) -> out, for our flash and jax's bundled flash at the same blocks."""
    ours = functools.partial(
        flash_attention,
        causal=causal,
        scale=scale,
        block_sizes=BlockSizes(block, block),
        interpret=interpret,
    )
    sizes = jax_flash.BlockSizes(
        block_q=block, block_k_major=block, block_k=block, block_b=1,
        block_q_major_dkv=block, block_k_major_dkv=block, block_k_dkv=block, block_q_dkv=block,
        block_k_major_dq=block, block_k_dq=block, block_q_dq=block,
    )  # fmt: skip
    theirs = functools.partial(
        jax_flash.flash_attention, causal=causal, sm_scale=scale, block_sizes=sizes
    )
    return {"lcm_flash": ours, "jax_flash": theirs}


def bench_interpret(args):
    b, n, t, h, block = 1, args.heads, args.seq, args.head_dim, args.block
    q, k, v = _inputs(b, n, t, h, jnp.float32)
    modes = {"tpu_interpret": pltpu.InterpretParams(), "generic_interpret": True}
    for mode, params in modes.items():
        for causal in (False, True):
            for name, fn in _impls(causal, block, h**-0.5, params).items():
                for pass_name, call in (("fwd", jax.jit(fn)), ("fwd+bwd", _with_grad(fn))):
                    # jax's kernel has no interpret argument: force the mode while tracing
                    # (passing True there selects the generic interpreter).
                    with pltpu.force_tpu_interpret_mode(params):
                        seconds = timing.median_seconds(call, (q, k, v), args.runs)
                    _emit(
                        bench="flash_interpret", backend=jax.default_backend(), impl=name,
                        mode=mode, pass_=pass_name, causal=causal, shape_bnth=[b, n, t, h],
                        block=block, seconds=round(seconds, 4), runs=args.runs,
                    )  # fmt: skip


def bench_tiles(args):
    """Tiles our kernels compute (counted by the tile probe) against the dense grid."""
    b, n, t, h, block = 1, 1, args.seq, 32, args.block
    q, k, v = _inputs(b, n, t, h, jnp.float32)
    nb = t // block
    cases = [
        ("flash", PositionalMask(causal=False)),
        ("flash", PositionalMask(causal=True)),
        ("block_sparse", PositionalMask(causal=True, window_left=2 * block - 1)),
        ("block_sparse", PositionalMask(causal=True, window_left=block - 1, sink=block // 2)),
    ]
    for kernel, mask in cases:
        seen = []
        probe = lambda name, *ids, seen=seen: seen.append(name)  # noqa: E731
        if kernel == "flash":
            fn = functools.partial(
                flash_attention, causal=mask.causal, block_sizes=BlockSizes(block, block)
            )
        else:
            lists = block_lists_from_mask(mask, t, t, block, block)
            fn = functools.partial(block_sparse_attention, lists=lists, mask=mask)
        jax.block_until_ready(fn(q, k, v, tile_probe=probe))
        pos = np.arange(t)
        tiles = np.asarray(mask.allows(pos[:, None], pos[None])).reshape(nb, block, nb, block)
        _emit(
            bench="tiles_visited", kernel=kernel, mask=repr(mask), seq=t, block=block,
            tiles_computed=len(seen), tiles_nonempty=int(tiles.any(axis=(1, 3)).sum()),
            tiles_dense=nb * nb,
        )  # fmt: skip


def _dot_product_attention(q, k, v, *, scale, causal, implementation):
    """``jax.nn.dot_product_attention`` (layout [B,T,N,H]) called on our [B,N,T,H] layout."""
    out = jax.nn.dot_product_attention(
        *(jnp.swapaxes(x, 1, 2) for x in (q, k, v)),
        scale=scale,
        is_causal=causal,
        implementation=implementation,
    )
    return jnp.swapaxes(out, 1, 2)


def bench_compiled(args):
    """Compiled TFLOP/s on an accelerator."""
    backend = jax.default_backend()
    b, n, t, h = args.batch, args.heads, args.seq, args.head_dim
    q, k, v = _inputs(b, n, t, h, jnp.bfloat16)
    scale = h**-0.5
    for causal in (False, True):
        mask = PositionalMask(causal=causal)
        flops_fwd = 4 * b * n * h * _visible_pairs(mask, t)
        impls = {
            f"dot_product_attention_{impl}": functools.partial(
                _dot_product_attention, scale=scale, causal=causal, implementation=impl
            )
            for impl in (("xla", "cudnn") if backend == "gpu" else ("xla",))
        }
        if backend == "tpu":
            block = args.compiled_block
            impls.update(_impls(causal, block, scale, interpret=False))
            lists = block_lists_from_mask(mask, t, t, block, block)
            impls["lcm_block_sparse"] = functools.partial(
                block_sparse_attention, lists=lists, mask=mask, scale=scale, interpret=False
            )
        else:
            _emit(bench="flash_compiled", backend=backend, impl="lcm_flash", causal=causal,
                  skipped="TPU Mosaic kernel; no GPU lowering yet")  # fmt: skip
        for name, fn in impls.items():
            for pass_name, call, flops in (
                ("fwd", jax.jit(fn), flops_fwd),
                ("fwd+bwd", _with_grad(fn), 3.5 * flops_fwd),
            ):
                try:
                    seconds = timing.median_seconds(call, (q, k, v), args.runs)
                except Exception as e:  # e.g. cudnn refusing a shape: report, keep going
                    _emit(bench="flash_compiled", backend=backend, impl=name, pass_=pass_name,
                          causal=causal, error=f"{type(e).__name__}: {str(e)[:200]}")  # fmt: skip
                    continue
                _emit(
                    bench="flash_compiled", backend=backend, device=jax.devices()[0].device_kind,
                    impl=name, pass_=pass_name, causal=causal, shape_bnth=[b, n, t, h],
                    dtype="bfloat16", seconds=round(seconds, 6),
                    tflops=round(flops / seconds / 1e12, 2), runs=args.runs,
                )  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=None, help="T = S (default 1024 CPU, 8192 else)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=None, help="H (default 64 CPU, 128 else)")
    parser.add_argument("--batch", type=int, default=4, help="B for compiled runs (CPU uses 1)")
    parser.add_argument("--block", type=int, default=128, help="block size for interpret runs")
    parser.add_argument("--compiled-block", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    accelerated = jax.default_backend() in ("tpu", "gpu")
    args.seq = args.seq or (8192 if accelerated else 1024)
    args.head_dim = args.head_dim or (128 if accelerated else 64)
    if accelerated:
        bench_compiled(args)
    else:
        bench_interpret(args)
        bench_tiles(args)


if __name__ == "__main__":
    main()
