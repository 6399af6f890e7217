"""Training throughput and MFU of the quickstart model at sequence 2048 on this machine.

    python experiments/bench_train.py [--seq 2048] [--batch 4] [--steps 5] [--impl blockwise xla]
        [--block 128 512]

Prints one JSON line per attention implementation. MFU = tokens/s x model FLOPs per token
(``lcm.train.metrics.train_flops_per_token``: 6 x matmul params + attention, causal at half)
divided by the float32 matmul peak of this machine measured in the same run (a 2048^3
``jnp.dot``, best of 5). Batches are synthetic tokens (the step does not depend on content).
"""

import argparse
import json
import os
import statistics
import time

import jax
import numpy as np

from lcm import config as config_lib
from lcm import model as model_lib
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


def bench(impl, seq_len, batch_size, steps, peak, block):
    config = config_lib.load_config(str(config_lib.REPO_ROOT / "configs" / "quickstart.py"))
    config.seq_len = seq_len
    config.data.batch_size = batch_size
    config.model.attention.impl = impl
    config.model.attention.block_q = config.model.attention.block_kv = block
    config.mesh.shape = (1, 1, 1, 1)
    mesh = mesh_lib.make_mesh(config.mesh, devices=jax.devices()[:1])
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
        state, m = train_step(state, batch)  # compile
        jax.block_until_ready(m)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            state, m = train_step(state, batch)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    tokens_per_sec = batch_size * seq_len / step_s
    flops = metrics.train_flops_per_token(spec, seq_len)
    return {
        "impl": impl,
        "block": block,
        "seq_len": seq_len,
        "batch": batch_size,
        "step_s": step_s,
        "tokens_per_sec": tokens_per_sec,
        "model_flops_per_token": flops,
        "achieved_flops": tokens_per_sec * flops,
        "peak_matmul_flops": peak,
        "mfu": tokens_per_sec * flops / peak,
        "load": os.getloadavg()[0],
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--impl", nargs="+", default=["blockwise", "xla"])
    parser.add_argument("--block", type=int, nargs="+", default=[128, 512])
    args = parser.parse_args()
    peak = metrics.measure_peak_flops(2048)
    for impl in args.impl:
        for block in args.block if impl in ("blockwise", "pallas") else args.block[:1]:
            record = bench(impl, args.seq, args.batch, args.steps, peak, block)
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
