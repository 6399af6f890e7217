"""One process of the two-process ring test (run by ring_multiprocess_test.py, not by pytest).

Usage: python _ring_worker.py PROCESS_ID PORT. Each process has 4 CPU devices; the mesh
(data=2, context=4) spans both processes, so ring steps cross the process boundary.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax
import numpy as np
from jax.experimental import multihost_utils

from lcm import attention
from lcm.attention import layouts
from lcm.parallel import mesh as mesh_lib
from lcm.parallel import sharding


def main(process_id: int, port: int) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
    rng = np.random.default_rng(0)  # same arrays on both processes
    b, t, n, kh, h = 2, 64, 4, 2, 8
    q = rng.standard_normal((b, t, n, h), dtype=np.float32)
    k = rng.standard_normal((b, t, kh, h), dtype=np.float32)
    v = rng.standard_normal((b, t, kh, h), dtype=np.float32)
    pos = np.tile(np.arange(t, dtype=np.int32), (b, 1))
    dout = rng.standard_normal((b, t, n, h), dtype=np.float32)
    q, k, v, pos, dout = (layouts.permute(x, "zigzag", 4) for x in (q, k, v, pos, dout))

    def attend(impl):
        options = {"block_q": 8, "block_kv": 8} if impl == "ring" else {}
        return lambda q, k, v, pos: attention.attend(
            q, k, v, mask=attention.Causal(), impl=impl, q_pos=pos, k_pos=pos, **options
        )

    def loss(impl):
        return lambda q, k, v, pos, dout: (attend(impl)(q, k, v, pos) * dout).sum()

    mesh = mesh_lib.make_mesh(
        {"axes": mesh_lib.MESH_AXES, "shape": (2, 1, 4, 1), "axis_types": "auto"}
    )
    with sharding.use_mesh(mesh):

        def put(x, names):
            return jax.make_array_from_callback(
                x.shape, sharding.named_sharding(mesh, names), lambda idx: x[idx]
            )

        args = [put(x, ("batch", "length") + (None,) * (x.ndim - 2)) for x in (q, k, v, pos)]
        fn = jax.jit(jax.value_and_grad(loss("ring"), argnums=(0, 1, 2)))
        value, grads = fn(*args, put(dout, ("batch", "length", None, None)))
        got = [multihost_utils.process_allgather(x, tiled=True) for x in (value, *grads)]
    want_value, want_grads = jax.value_and_grad(loss("reference"), argnums=(0, 1, 2))(
        q, k, v, pos, dout
    )
    errors = [
        float(np.max(np.abs(np.asarray(g) - np.asarray(w)) / (np.abs(np.asarray(w)).max() + 1)))
        for g, w in zip(got, (want_value, *want_grads), strict=True)
    ]
    print(f"process {process_id}: devices={jax.device_count()} max_rel_err={max(errors):.2e}")
    assert max(errors) < 1e-5, errors


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
