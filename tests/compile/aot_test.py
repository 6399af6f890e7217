"""``lcm.compile``: the real train and eval steps compiled for compile-only TPU slices.

Every attention implementation's train step compiles for a v5e slice; the assertions read what
the compiled program does (Mosaic kernels, host callbacks, collectives). Nothing executes on
the TPU devices: they come from libtpu's compile-only client.
"""

import json
import re
import subprocess
import sys

import pytest
from jax.sharding import PartitionSpec as P

from configs import tiny
from lcm import config as config_lib
from lcm.compile import aot, hlo, topology
from lcm.parallel import mesh as mesh_lib
from lcm.parallel import sharding
from lcm.train import program

T, H = 512, 32  # sequence and head dim: an all-gather with both dims would gather q, k or v


def small_config(impl="blockwise", mesh=(2, 1, 1, 2), **overrides):
    config = tiny.get_config()
    config.seq_len = T
    m = config.model
    m.d_model, m.num_heads, m.num_kv_heads, m.head_dim, m.mlp_dim = 96, 4, 2, H, 192
    m.dtype = "bfloat16"
    m.attention.impl = impl
    m.attention.block_q = m.attention.block_kv = 128
    config.data.batch_size = 4
    config.mesh.shape = mesh
    config.update_from_flattened_dict(overrides)
    return config


def gathers_of_activations(text: str) -> list[str]:
    """All-gather results holding a sequence and a head dim: q, k or v gathered."""
    shapes = re.findall(r"= (\S+) all-gather(?:-done)?\(", text)
    dims = [
        set(map(int, filter(None, re.findall(r"\[([\d,]*)\]", s)[0].split(",")))) for s in shapes
    ]
    return [s for s, d in zip(shapes, dims, strict=True) if {T, H} <= d]


def compile_train(config, name="v5e:2x2"):
    _, steps, _ = aot.compile_steps(config, name, eval_step=False)
    compiled, _ = steps["train"]
    return compiled, hlo.summarize(compiled.as_text())


def test_state_shardings_run_nothing_on_the_mesh():
    # An eager jax.random.key under a mesh of compile-only devices raised
    # "'Executable' object has no attribute 'local_devices'".
    config = small_config()
    mesh = mesh_lib.make_mesh(config.mesh, devices=topology.devices("v5e:2x2"))
    rules = sharding.validate_rules(config.mesh.rules, config.mesh.axes)
    with sharding.use_mesh(mesh, rules):  # build_program runs state_lib.state_shardings
        prog = program.build_program(config, mesh, rules)
    abstract, shardings = prog.abstract, prog.shardings
    wq = abstract.params["layers"]["block0"]["attn"]["wq"]
    assert wq.sharding.mesh.devices.flat[0].platform == "tpu"
    spec = shardings.params["layers"]["block0"]["attn"]["wq"].spec
    assert spec == P(None, ("fsdp", "context"), "tensor", None)


ON_KERNEL = {"model.attention.sparse_kernel": "pallas"}
# (impl, overrides, Mosaic kernels expected, mesh)
CASES = {
    "blockwise": ("blockwise", {}, False, (2, 1, 1, 2)),
    "xla": ("xla", {}, False, (2, 1, 1, 2)),
    "pallas_flash": ("pallas", {}, True, (2, 1, 1, 2)),
    "pallas_window": (
        "pallas", {"model.attention.mask": "sliding_window", "model.attention.window": 128},
        True, (2, 1, 1, 2),
    ),
    # A window of 100 over shards of 128 in the contiguous layout: 2 of the 4 ring hops.
    "ring_window": ("ring", {"model.attention.mask": "sliding_window",
                             "model.attention.window": 100,
                             "model.attention.context_layout": "contiguous"}, False, (1, 1, 4, 1)),
    "ring_pallas": ("ring", {"model.attention.context_inner": "pallas"}, True, (1, 1, 4, 1)),
    "all_gather": ("all_gather", {}, False, (1, 1, 4, 1)),
    "all_gather_pallas": ("all_gather", {"model.attention.context_inner": "pallas"}, True,
                          (1, 1, 4, 1)),
    "ulysses": ("ulysses", {}, False, (1, 1, 4, 1)),  # 4 heads over 4 devices, KV heads x2
    "usp_pallas": ("usp", {"model.attention.context_inner": "pallas"}, True, (1, 1, 4, 1)),
    "moba": ("moba", {**ON_KERNEL, "model.attention.sparse_block": 128,
                      "model.attention.sparse_top_k": 2}, True, (2, 1, 1, 2)),
    "hsa": ("hsa", {**ON_KERNEL, "model.attention.sparse_block": 128,
                    "model.attention.sparse_top_k": 2}, True, (2, 1, 1, 2)),
    "nsa": ("nsa", {**ON_KERNEL, "model.attention.nsa_slc_block": 128,
                    "model.attention.nsa_top_n": 2, "model.attention.nsa_window": 128},
            True, (2, 1, 1, 2)),
    # Data parallel only: the shift of half the heads gathers heads that tensor splits.
    "s2_attn": ("s2_attn", {**ON_KERNEL,
                            "model.attention.sparse_block": 128}, True, (4, 1, 1, 1)),
    "sink_window": ("sink_window", {**ON_KERNEL,
                                    "model.attention.recent": 128}, True, (2, 1, 1, 2)),
}  # fmt: skip


# Covered in the default suite by their siblings (all_gather, usp_pallas, nsa's block-sparse
# kernel): @slow.
SLOW_CASES = {"all_gather_pallas", "hsa", "ulysses"}


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=[pytest.mark.slow] * (c in SLOW_CASES)) for c in sorted(CASES)],
)
def test_train_step_compiles_for_tpu(case):
    impl, overrides, mosaic, mesh = CASES[case]
    compiled, summary = compile_train(small_config(impl, mesh, **overrides))
    assert summary.host_callbacks.ops == 0
    assert (summary.mosaic.ops > 0) == mosaic, summary.mosaic
    layers = config_lib.base_config().model.num_layers
    gathers = gathers_of_activations(compiled.as_text())
    permutes = summary.collectives["collective-permute"].executed
    to_all = summary.collectives["all-to-all"].executed
    if impl == "all_gather":  # K and V gathered (forward and the backward's regather), and
        # dK/dV reduce-scattered back to their owners; nothing travels a ring
        assert len(gathers) >= 4 * layers and permutes == 0, (gathers, permutes)
        assert summary.collectives["reduce-scatter"].executed >= 2 * layers, summary.collectives
    else:
        assert gathers == []
    if impl == "ring":  # per hop: K, V forward; K, V, dK, dV backward; issued beside the tile
        hops = 2 if case == "ring_window" else 4
        assert 6 * (hops - 1) * layers <= permutes, summary.collectives
        assert case != "ring_window" or permutes < 6 * (4 - 1) * layers, summary.collectives
        assert summary.overlapped["collective-permute"].executed >= 2 * (hops - 1) * layers
    if impl in ("ulysses", "usp"):  # q, k, v to head shards and the output back, per layer
        assert to_all >= 4 * layers, summary.collectives
    if impl == "usp":  # a ring of 2 groups of 2: one hop forward, two back
        assert permutes >= (1 + 2) * layers, summary.collectives
    if impl in ("blockwise", "ulysses"):
        assert permutes == 0


def test_pallas_runs_per_chip_on_a_3d_mesh():
    # (data 2, fsdp 2, tensor 2): a Mosaic call under GSPMD alone fails to compile ("cannot be
    # automatically partitioned"); per chip, no q/k/v is gathered, and the per-chip temporaries
    # shrink as the same global batch spreads over twice the chips.
    config = small_config("pallas", (2, 2, 1, 2), seq_len=2048, **{"data.batch_size": 8})
    config.model.attention.block_q = config.model.attention.block_kv = 512
    big, summary = compile_train(config, "v5e:2x4")
    assert summary.mosaic.ops == 3 and summary.host_callbacks.ops == 0
    assert gathers_of_activations(big.as_text()) == []
    config.mesh.shape = (1, 2, 1, 2)
    small, _ = compile_train(config, "v5e:2x2")
    big_temp = big.memory_analysis().temp_size_in_bytes
    assert 0 < big_temp < 0.6 * small.memory_analysis().temp_size_in_bytes


def test_report_is_consistent():
    report = aot.compile_config(small_config(), "v5e:2x2")
    assert report["devices"] == 4 and report["mesh"] == {
        "data": 2, "fsdp": 1, "context": 1, "tensor": 2
    }  # fmt: skip
    assert report["model_flops_per_step"] == report["model_flops_per_token"] * 4 * T
    floor = report["model_flops_per_step"] / (4 * 197e12)
    assert report["roofline_floor_s"] == pytest.approx(floor, rel=1e-12)
    for step in report["steps"].values():
        hbm = step["hbm"]
        assert hbm["total"] == (
            hbm["arguments"] + hbm["outputs"] - hbm["aliased"] + hbm["temporaries"]
            + hbm["generated_code"]
        )  # fmt: skip
        assert hbm["fits"] and hbm["capacity"] == 16 * 2**30
        assert step["xla_flops_per_chip"] > 0 and step["compile_s"] > 0
        assert set(step["collectives"]) == set(hlo.COLLECTIVES)
    # The train step donates its state: the new state reuses its buffers.
    assert report["steps"]["train"]["hbm"]["aliased"] > 0


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "lcm.compile", "--config", "configs/tiny.py", *args],
        cwd=config_lib.REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_cli_writes_the_report(tmp_path):
    out = tmp_path / "report.json"
    run = _cli("--topology", "v5e:2x2", "--config.mesh.shape=(4,1,1,1)", f"--out={out}")
    assert run.returncode == 0, run.stderr
    assert "[train] HBM/chip" in run.stdout and "fits" in run.stdout
    report = json.loads(out.read_text())
    assert report["topology"] == "v5e:2x2" and set(report["steps"]) == {"train", "eval"}


def test_cli_refuses_a_step_that_does_not_fit():
    # A 2^22 x 2048 float32 embedding (32 GiB, plus its Adam state) on 16 GiB v5e chips.
    run = _cli(
        "--topology", "v5e:2x2", "--config.mesh.shape=(4,1,1,1)",
        "--config.model.vocab_size=4194304", "--config.model.d_model=2048",
        "--config.model.head_dim=1024", "--eval_step=false",
    )  # fmt: skip
    assert run.returncode == 1
    assert "the train step does not fit in a v5e chip's HBM" in run.stderr
    assert "exceeds available HBM" in run.stderr  # XLA's own words, with the sizes


def test_cli_names_a_bad_topology():
    run = _cli("--topology", "v9:2x2")
    assert run.returncode == 2
    assert "topology = 'v9:2x2': expected <chip>:<dims>" in run.stderr


def test_mesh_may_split_a_physical_axis():
    # fsdp 32 x context 2 on a 4x4x4 torus needs part of a physical axis; jax.make_mesh refuses.
    config = config_lib.base_config()
    config.mesh.shape = (1, 32, 2, 1)
    mesh = mesh_lib.make_mesh(config.mesh, devices=topology.devices("v5p:4x4x4"))
    assert dict(mesh.shape) == {"data": 1, "fsdp": 32, "context": 2, "tensor": 1}
    assert len({d.id for d in mesh.devices.flat}) == 64


def test_gradient_accumulation_moves_no_batch():
    # A contiguous [A, B/A] split of a data-sharded batch made XLA gather the batch (9
    # all-gathers and 22 collective-permutes here) and run every micro-batch on every device.
    def compile_with(accum):
        config = small_config(mesh=(4, 1, 1, 1), **{"train.grad_accum_steps": accum})
        config.data.batch_size = 8
        compiled, summary = compile_train(config)
        return compiled.cost_analysis()["flops"], summary.collectives

    plain_flops, plain = compile_with(1)
    accum_flops, accum = compile_with(2)
    for kind in ("all-gather", "collective-permute", "all-to-all"):
        assert accum[kind].ops <= plain[kind].ops, kind
    # XLA counts the scanned micro-batch once: one micro-batch is half the plain step's work.
    assert accum_flops == pytest.approx(plain_flops / 2, rel=0.05)


@pytest.mark.slow  # two compiles; the (fsdp, context) rule itself: tests/parallel/sharding_test.py
def test_parameters_are_sharded_over_the_context_ranks_too():
    def argument_bytes(embed_axes):
        config = small_config("blockwise", (1, 2, 2, 1), **{"model.num_layers": 1})
        # Wide enough that TPU tiles hold no padding after the 4-way split.
        config.model.d_model, config.model.mlp_dim = 1024, 2048
        config.mesh.rules = tuple(
            (name, embed_axes if name == "embed" else axes) for name, axes in config.mesh.rules
        )
        compiled, _ = compile_train(config)
        return compiled.memory_analysis().argument_size_in_bytes

    # The state (params + Adam moments) is nearly all of the arguments: half per chip.
    ratio = argument_bytes(("fsdp", "context")) / argument_bytes("fsdp")
    assert 0.45 < ratio < 0.55, ratio


def test_save_attention_runs_each_attention_forward_once():
    # Ring over 4 chips with Pallas tiles: each layer's forward is 4 kernel calls (one per hop),
    # its backward 8 (dq and dkv per hop). Full remat reruns the forward in the backward pass
    # (and its K/V hops); save_attention keeps out and lse; offload_attention keeps them in
    # host memory (memory space S(5) in the TPU HLO).
    def compile_with(policy):
        config = small_config("ring", (1, 1, 4, 1), **{"model.remat_policy": policy})
        config.model.attention.context_inner = "pallas"
        compiled, summary = compile_train(config)
        return compiled.as_text(), summary

    layers = tiny.get_config().model.num_layers
    _, full = compile_with("full")
    _, saved = compile_with("save_attention")
    offload_text, offloaded = compile_with("offload_attention")
    assert full.mosaic.executed == layers * (4 + 4 + 8)
    assert saved.mosaic.executed == offloaded.mosaic.executed == layers * (4 + 8)
    permutes = [s.collectives["collective-permute"].executed for s in (full, saved, offloaded)]
    # The rerun forward's 3 hops each rotate k, v, their positions and their segment ids.
    assert permutes[0] - permutes[1] == layers * 3 * 4 and permutes[1] == permutes[2]
    assert "S(5)" in offload_text
