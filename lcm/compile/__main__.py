"""``python -m lcm.compile --config C --topology NAME [--out FILE] [--config.a.b=v ...]``.

Compiles the train and eval steps of config ``C`` for TPU slice ``NAME`` (e.g. ``v5p:4x4x4``, a
v5p-64) on this host, with no TPU, no weights and no data; prints a table and writes the report
as JSON (``--out``). Exits 1 with a message saying by how much when a step does not fit in the
chip's HBM, 2 for an invalid config or topology.
"""

from __future__ import annotations

import os

# The host only compiles: keep jax's own backend on the CPU (libtpu is used compile-only).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json
import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from lcm.compile import aot

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice, e.g. v5e:2x2, v5p:4x4x4.")
_OUT = flags.DEFINE_string("out", None, "Write the JSON report here.")
_EVAL = flags.DEFINE_bool("eval_step", True, "Also compile the eval step.")

GIB = 2**30
_BYTES = ("arguments", "outputs", "aliased", "temporaries", "generated_code", "total", "capacity")


def table(report: dict) -> str:
    """The report as a short human-readable table."""
    mesh = " ".join(f"{k}={v}" for k, v in report["mesh"].items())
    lines = [
        f"{report['topology']} ({report['devices']} chips), mesh {mesh}; "
        f"{report['model']['parameters'] / 1e9:.2f}B parameters, "
        f"{report['batch_size']} x {report['seq_len']:,} tokens, "
        f"attention {report['model']['attention_impl']}",
        f"model FLOPs: {report['model_flops_per_step'] / 1e12:,.1f} TFLOP/step, "
        f"{report['model_flops_per_token'] / 1e9:,.2f} GFLOP/token; roofline floor (MFU 1 at "
        f"the bf16 peak) {report['roofline_floor_s'] * 1e3:,.1f} ms/step",
    ]
    for name, step in report["steps"].items():
        hbm = {k: v / GIB if k in _BYTES else v for k, v in step["hbm"].items()}
        hidden = {k: v["executed"] for k, v in step.get("overlapped", {}).items()}
        coll = ", ".join(
            f"{k} {v['executed']} ({v['bytes'] / GIB:,.2f} GiB, {v['wire_bytes'] / GIB:,.2f} sent"
            + (f"; {hidden[k]} overlapped with compute)" if hidden.get(k) else ")")
            for k, v in step["collectives"].items()
            if v["ops"]
        )
        lines += [
            f"[{name}] HBM/chip {hbm['total']:,.2f} of {hbm['capacity']:,.2f} GiB "
            f"({'fits' if hbm['fits'] else 'DOES NOT FIT'}, headroom {hbm['headroom']:.1%}): "
            f"arguments {hbm['arguments']:,.2f}, temporaries {hbm['temporaries']:,.2f}, "
            f"outputs {hbm['outputs']:,.2f} (aliased {hbm['aliased']:,.2f})",
            f"[{name}] XLA cost (loop bodies once) {step['xla_flops_per_chip'] / 1e12:,.2f} TFLOP,"
            f" {step['xla_bytes_per_chip'] / GIB:,.1f} GiB per chip; Mosaic kernels "
            f"{step['mosaic_kernels']['ops']}; compiled in {step['compile_s']:.1f} s",
            f"[{name}] collectives per step: {coll or 'none'}",
        ]
    return "\n".join(lines)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        report = aot.compile_config(_CONFIG.value, _TOPOLOGY.value, eval_step=_EVAL.value)
    except ValueError as e:
        print(f"lcm.compile: {e}", file=sys.stderr)
        sys.exit(2)
    except aot.DoesNotFit as e:
        print(f"lcm.compile: {e}", file=sys.stderr)
        sys.exit(1)
    print(table(report), flush=True)
    if _OUT.value:
        pathlib.Path(_OUT.value).write_text(json.dumps(report, indent=2) + "\n")
    over = [
        f"the {name} step needs {s['hbm']['total'] / GIB:,.2f} GiB per chip, "
        f"{(s['hbm']['total'] - s['hbm']['capacity']) / GIB:,.2f} GiB more than the "
        f"{s['hbm']['capacity'] / GIB:,.2f} GiB of a {report['chip']} chip"
        for name, s in report["steps"].items()
        if not s["hbm"]["fits"]
    ]
    if over:
        print("lcm.compile: does not fit: " + "; ".join(over), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "topology"])
    app.run(main)
