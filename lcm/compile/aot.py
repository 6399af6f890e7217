"""Compile a config's train and eval steps for a TPU slice, and report what they need.

``compile_config(config, topology)`` builds the mesh from ``config.mesh`` over the slice's
compile-only devices, builds the program ``lcm.train`` runs (``lcm.train.program``) with abstract
state and batch (no weights, no data), compiles both steps and reads, per chip: HBM (XLA's
``memory_analysis``), FLOPs and bytes (``cost_analysis``), collectives and Mosaic kernels (the
optimized HLO, ``lcm.compile.hlo``). XLA's cost analysis counts the body of a loop once (a
scanned layer, a ring hop, an accumulation micro-batch), so the step-time floor comes from the
model FLOPs instead: one chip's share of them at its bf16 peak (the step time at MFU 1).

Nothing here executes on the slice's devices, so it runs on a CPU host with libtpu installed.
"""

from __future__ import annotations

import time

import jax

from lcm import config as config_lib
from lcm.compile import hlo, topology
from lcm.parallel import mesh as mesh_lib
from lcm.parallel import sharding
from lcm.train import metrics, program


class DoesNotFit(Exception):
    """The compiled step needs more HBM per chip than the chip has (or XLA refused it)."""


def _memory(compiled, capacity: int) -> dict:
    m = compiled.memory_analysis()
    total = (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        - m.alias_size_in_bytes
        + m.temp_size_in_bytes
        + m.generated_code_size_in_bytes
    )
    return {
        "arguments": m.argument_size_in_bytes,
        "outputs": m.output_size_in_bytes,
        "aliased": m.alias_size_in_bytes,  # outputs that reuse donated arguments
        "temporaries": m.temp_size_in_bytes,
        "generated_code": m.generated_code_size_in_bytes,
        "total": total,
        "capacity": capacity,
        "fits": total <= capacity,
        "headroom": 1.0 - total / capacity,
    }


def _analyze(compiled, chip) -> dict:
    cost = compiled.cost_analysis()
    return {
        "hbm": _memory(compiled, chip.hbm_bytes),
        # As XLA counts them: every loop body once.
        "xla_flops_per_chip": float(cost.get("flops", 0.0)),
        "xla_bytes_per_chip": float(cost.get("bytes accessed", 0.0)),
        **hlo.summarize(compiled.as_text()).as_dict(),
    }


def _compile(jitted, *args, what: str, chip):
    start = time.perf_counter()
    try:
        compiled = jitted.lower(*args).compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" in str(e) or "Ran out of memory" in str(e):
            # Mosaic refuses a kernel whose tiles overflow the core's VMEM with the same status.
            memory = "VMEM (a kernel's tiles)" if "VmemOom" in str(e) else "HBM"
            message = f"the {what} does not fit in a {chip.name} chip's {memory}: {e}"
            raise DoesNotFit(message) from None
        raise
    return compiled, time.perf_counter() - start


def compile_steps(config, topology_name: str, *, eval_step: bool = True):
    """``(program, {"train": (compiled, seconds), "eval": ...}, mesh)`` of ``config`` on the slice.

    Raises:
      ValueError: an invalid config or topology name (before anything is compiled).
      DoesNotFit: XLA refused a step for lack of HBM.
    """
    devices, chip = topology.devices(topology_name), topology.chip(topology_name)
    config_lib.validate(config, num_devices=len(devices))
    mesh = mesh_lib.make_mesh(config.mesh, devices=devices)
    rules = sharding.validate_rules(config.mesh.rules, config.mesh.axes)
    with sharding.use_mesh(mesh, rules):
        prog = program.build_program(config, mesh, rules)
        batch = prog.abstract_batch(config.data.batch_size, config.data.seq_len)
        steps = {
            "train": _compile(prog.train_step, prog.abstract, batch, what="train step", chip=chip)
        }
        if eval_step:
            steps["eval"] = _compile(
                prog.eval_step, prog.abstract.params, batch, what="eval step", chip=chip
            )
    return prog, steps, mesh


def compile_config(config, topology_name: str, *, eval_step: bool = True) -> dict:
    """Compiles ``config``'s steps for ``topology_name`` (e.g. ``"v5p:4x4x4"``).

    Returns:
      The report (a JSON-ready dict): mesh, model FLOPs, and per step HBM per chip, XLA's
      FLOPs / bytes, roofline floor, collectives, Mosaic kernels, compile seconds.

    Raises:
      ValueError: an invalid config or topology name (before anything is compiled).
      DoesNotFit: XLA refused the program for lack of HBM.
    """
    chip = topology.chip(topology_name)
    prog, compiled, mesh = compile_steps(config, topology_name, eval_step=eval_step)
    devices = mesh.devices.size
    steps = {name: {**_analyze(c, chip), "compile_s": sec} for name, (c, sec) in compiled.items()}
    batch_size, seq_len = config.data.batch_size, config.data.seq_len
    per_token = metrics.train_flops_per_token(prog.spec, seq_len)
    tokens = batch_size * seq_len
    model_flops = per_token * tokens
    params = sum(x.size for x in jax.tree.leaves(prog.abstract.params))
    return {
        "topology": topology_name,
        "chip": chip.name,
        "devices": devices,
        "mesh": {name: int(size) for name, size in mesh.shape.items()},
        "chip_facts": {
            "hbm_bytes": chip.hbm_bytes,
            "bf16_flops": chip.bf16_flops,
            "hbm_bytes_per_s": chip.hbm_bytes_per_s,
        },
        "model": {
            "parameters": int(params),
            "attention_impl": config.model.attention.impl,
            "dtype": config.model.dtype,
            "remat_policy": config.model.remat_policy,
        },
        "batch_size": batch_size,
        "seq_len": seq_len,
        "tokens_per_step": tokens,
        "model_flops_per_token": per_token,
        "model_flops_per_step": model_flops,
        # The model FLOPs (no recomputation) at every chip's bf16 peak: the MFU = 1 step time.
        "roofline_floor_s": model_flops / (devices * chip.bf16_flops),
        "steps": steps,
    }
