"""Training throughput and MFU of the quickstart model at sequence 2048 on this machine.

    .venv/bin/python -m experiments.bench.train [--seq 2048] [--batch 4] [--steps 5]
        [--impl blockwise xla] [--block 128 512] [--scan-layers 1] [--remat none] [--devices 1]
        [--breakdown]

Prints one JSON line per (attention implementation, block size). MFU = tokens/s x model FLOPs
per token (``lcm.train.metrics.train_flops_per_token``: 6 x matmul params + attention, causal
at half) divided by the float32 matmul peak of this machine measured in the same run (a 2048^3
``jnp.dot``, best of 5). Batches are synthetic tokens (the step does not depend on content).

``--devices N`` trains data-parallel over N host devices (``XLA_FLAGS=
--xla_force_host_platform_device_count=N``, mesh ``data=N``; the peak is still one device's
matmul, which uses every core). On a CPU this is how the attention loops use more than one
core: a single device runs blockwise attention's tile loop on one core.

``--breakdown`` also times the pieces of one step on the same shapes, each jitted alone:
attention forward+backward (``attend`` at the model's q/k/v shapes, times the number of
layers), the whole model's loss forward, its forward+backward, and the optimizer update.
Each piece reports wall seconds and process CPU seconds (all threads); on a shared machine
the CPU-time shares are the steadier measure of where the time goes, since other people's
processes stretch wall time but not this process's CPU time. A last line gives the rates of
the step's primitive operations per CPU second: the peak matmul, the model's projection/MLP
matmuls, one attention tile's ``q.k`` einsum and its softmax exponentials; they bound the MFU
this machine can reach (at head dim 32 the tile's exponentials cost about as much as its
matmuls).
"""

import argparse
import json
import os
import statistics
import time

if __name__ == "__main__":  # host devices must be fixed before jax initializes its backend
    _devices = argparse.ArgumentParser(add_help=False)
    _devices.add_argument("--devices", type=int, default=1)
    if (_n := _devices.parse_known_args()[0].devices) > 1:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_n}"
        ).strip()

import jax
import jax.numpy as jnp
import numpy as np

from lcm import attention
from lcm import config as config_lib
from lcm import model as model_lib
from lcm.model import head
from lcm.parallel import mesh as mesh_lib
from lcm.parallel import sharding
from lcm.train import loop, metrics, optimizer
from lcm.train import state as state_lib
from lcm.train import step as step_lib


def _batch(batch_size, seq_len):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, (batch_size, seq_len + 1), dtype=np.int32)
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "positions": np.tile(np.arange(seq_len, dtype=np.int32), (batch_size, 1)),
        "segment_ids": np.ones((batch_size, seq_len), np.int32),
        "loss_mask": np.ones((batch_size, seq_len), np.int32),
    }


def _time(call, steps):
    """Median ``(wall, process CPU)`` seconds of ``call()`` over ``steps`` runs after a warm-up."""
    jax.block_until_ready(call())
    walls, cpus = [], []
    for _ in range(steps):
        wall, cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(call())
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def _config(impl, seq_len, batch_size, block, scan_layers, remat, devices=1):
    config = config_lib.load_config(str(config_lib.REPO_ROOT / "configs" / "quickstart.py"))
    config.seq_len = seq_len
    config.data.batch_size = batch_size
    config.model.attention.impl = impl
    config.model.attention.block_q = config.model.attention.block_kv = block
    config.model.scan_layers = scan_layers
    config.model.remat_policy = remat
    config.mesh.shape = (devices, 1, 1, 1)  # data parallel over the host devices
    return config


def bench(impl, seq_len, batch_size, steps, peak, block, scan_layers=True, remat="none",
          breakdown=False, devices=1):  # fmt: skip
    config = _config(impl, seq_len, batch_size, block, scan_layers, remat, devices)
    mesh = mesh_lib.make_mesh(config.mesh, devices=jax.devices()[:devices])
    rules = sharding.validate_rules(config.mesh.rules, config.mesh.axes)
    spec = model_lib.build_spec(config)
    model = model_lib.Transformer(spec)
    tx = optimizer.make_optimizer(config.train)
    with sharding.use_mesh(mesh, rules):
        _, shardings = state_lib.state_shardings(
            model, tx, mesh, rules, batch_size=batch_size, seq_len=seq_len
        )
        state = state_lib.init_state(
            model, tx, shardings, 0, batch_size=batch_size, seq_len=seq_len
        )
        batch_sharding = sharding.named_sharding(mesh, ("batch", "length"), rules)
        train_step = step_lib.jit_train_step(
            step_lib.make_train_step(model, tx, z_loss=0.0, grad_accum_steps=1),
            shardings,
            batch_sharding,
        )
        batch = loop.batch_to_device(config, mesh, batch_sharding)(_batch(batch_size, seq_len))
        holder = [state]

        def step():
            holder[0], m = train_step(holder[0], batch)  # the state is donated
            return m

        step_s, step_cpu = _time(step, steps)
        pieces = _pieces(spec, model, tx, holder[0], batch, steps) if breakdown else {}
    tokens_per_sec = batch_size * seq_len / step_s
    flops = metrics.train_flops_per_token(spec, seq_len)
    record = {
        "impl": impl,
        "block": block,
        "seq_len": seq_len,
        "batch": batch_size,
        "scan_layers": scan_layers,
        "remat": remat,
        "devices": devices,
        "step_s": step_s,
        "step_cpu_s": step_cpu,
        "tokens_per_sec": tokens_per_sec,
        "model_flops_per_token": flops,
        "achieved_flops": tokens_per_sec * flops,
        "peak_matmul_flops": peak,
        "mfu": tokens_per_sec * flops / peak,
        "load": os.getloadavg()[0],
    }
    for name, (wall, cpu) in pieces.items():
        record[f"{name}_s"], record[f"{name}_cpu_s"] = wall, cpu
        record[f"{name}_cpu_share"] = cpu / step_cpu
    return record


def _pieces(spec, model, tx, state, batch, steps):
    """Wall and CPU seconds of the parts of one train step, each jitted alone."""
    b, t = batch["inputs"].shape
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.standard_normal((b, t, spec.num_heads, spec.head_dim)), spec.dtype)
    k, v = (
        jnp.asarray(rng.standard_normal((b, t, spec.num_kv_heads, spec.head_dim)), spec.dtype)
        for _ in range(2)
    )
    ct = jnp.asarray(rng.standard_normal(q.shape), spec.dtype)
    pos, seg = batch["positions"], batch["segment_ids"]

    def attention_loss(q, k, v):
        out = attention.attend(
            q, k, v, mask=spec.layers[0].mask, impl=spec.attention, q_pos=pos, k_pos=pos,
            q_segment_ids=seg, kv_segment_ids=seg,
        )  # fmt: skip
        return jnp.vdot(out, ct)

    def loss(params):  # the train step's loss (chunked over config.model.loss_chunk)
        nll, _, tokens = head.model_cross_entropy(
            model, params, batch["inputs"], pos, seg, batch["targets"], batch["loss_mask"]
        )
        return nll / tokens

    attention_grad = jax.jit(jax.grad(attention_loss, argnums=(0, 1, 2)))
    forward, model_grad = jax.jit(loss), jax.jit(jax.grad(loss))
    grads = model_grad(state.params)
    update = jax.jit(lambda g, o, p: tx.update(g, o, p))
    wall, cpu = _time(lambda: attention_grad(q, k, v), steps)
    return {
        "attention_fwd_bwd_all_layers": (wall * spec.num_layers, cpu * spec.num_layers),
        "model_fwd": _time(lambda: forward(state.params), steps),
        "model_fwd_bwd": _time(lambda: model_grad(state.params), steps),
        "optimizer": _time(lambda: update(grads, state.opt_state, state.params), steps),
    }


def _rate(fn, *args, work, reps=10):
    """Best ``work`` per process-CPU second and per wall second of the jitted ``fn``."""
    fn = jax.jit(fn)
    jax.block_until_ready(fn(*args))
    cpu = wall = float("inf")
    for _ in range(reps):
        c, w = time.process_time(), time.perf_counter()
        jax.block_until_ready(fn(*args))
        cpu, wall = min(cpu, time.process_time() - c), min(wall, time.perf_counter() - w)
    return {"per_cpu_s": work / cpu, "per_wall_s": work / wall}


def primitive_rates(batch_size, seq_len, block):
    """FLOP (or element) rates of the step's building blocks at the quickstart model's shapes."""
    config = _config("blockwise", seq_len, batch_size, block, True, "none")
    s = model_lib.build_spec(config)
    rng = np.random.default_rng(0)

    def arr(*shape):
        return jnp.asarray(rng.standard_normal(shape), jnp.float32)

    tokens, g = batch_size * seq_len, s.num_heads // s.num_kv_heads
    square = arr(2048, 2048)
    tile_shape = (batch_size, s.num_kv_heads, g, block, block)
    rates = {
        "matmul_2048": _rate(lambda a: a @ a, square, work=2 * 2048**3),
        "matmul_mlp_up": _rate(
            jnp.matmul, arr(tokens, s.d_model), arr(s.d_model, s.mlp_dim),
            work=2 * tokens * s.d_model * s.mlp_dim,
        ),
        "matmul_mlp_down": _rate(
            jnp.matmul, arr(tokens, s.mlp_dim), arr(s.mlp_dim, s.d_model),
            work=2 * tokens * s.d_model * s.mlp_dim,
        ),
        "tile_qk_einsum": _rate(
            lambda q, k: jnp.einsum("bqkgh,bskh->bkgqs", q, k),
            arr(batch_size, block, s.num_kv_heads, g, s.head_dim),
            arr(batch_size, block, s.num_kv_heads, s.head_dim),
            work=2 * np.prod(tile_shape) * s.head_dim,
        ),
        "tile_softmax_elements": _rate(
            lambda x: jnp.exp(x - x.max(-1, keepdims=True)).sum(-1), arr(*tile_shape),
            work=np.prod(tile_shape),
        ),
    }  # fmt: skip
    return {f"{name}_{k}": float(v) for name, r in rates.items() for k, v in r.items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--impl", nargs="+", default=["blockwise", "xla"])
    parser.add_argument("--block", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--scan-layers", type=int, choices=(0, 1), default=1)
    parser.add_argument("--remat", default="none")
    parser.add_argument("--breakdown", action="store_true", help="also time the step's parts")
    parser.add_argument(
        "--devices", type=int, default=1,
        help="data-parallel over this many host devices (XLA_FLAGS host_platform_device_count)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.devices > 1 and args.breakdown:
        parser.error("--breakdown times the pieces on one device; use --devices 1")
    peak = metrics.measure_peak_flops(2048)
    for impl in args.impl:
        for block in args.block if impl in ("blockwise", "pallas") else args.block[:1]:
            record = bench(
                impl, args.seq, args.batch, args.steps, peak, block, bool(args.scan_layers),
                args.remat, args.breakdown, args.devices,
            )  # fmt: skip
            print(json.dumps(record), flush=True)
    if args.breakdown:
        rates = primitive_rates(args.batch, args.seq, args.block[0])
        print(json.dumps({"primitive_rates": True, **rates, "load": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
