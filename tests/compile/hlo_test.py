"""``lcm.compile.hlo``: collectives, Mosaic kernels and host callbacks read from HLO text."""

import pytest

from lcm.compile import hlo

# A hand-written optimized module: an entry with one all-reduce and a while loop (a scan of 6
# steps) whose body holds an async all-gather, a collective-permute and a Mosaic call, and a
# second loop whose trip count is recorded by XLA; a data-dependent loop counts once.
TRIP_3 = 'backend_config={"known_trip_count":{"n":"3"}}'
TEXT = """HloModule jit_step, is_scheduled=true, num_partitions=8

%cond (p: (s32[], bf16[8,128])) -> pred[] {
  %c6 = s32[]{:T(128)} constant(6)
  %p = (s32[]{:T(128)}, bf16[8,128]{1,0}) parameter(0)
  %i = s32[]{:T(128)} get-tuple-element(%p), index=0
  ROOT %lt = pred[]{:T(512)} compare(%i, %c6), direction=LT
}

%body (p.1: (s32[], bf16[8,128])) -> (s32[], bf16[8,128]) {
  %p.1 = (s32[], bf16[8,128]{1,0}) parameter(0)
  %x = bf16[8,128]{1,0} get-tuple-element(%p.1), index=1
  %ag-start = (bf16[8,128]{1,0}, bf16[32,128]{1,0}) all-gather-start(%x), GROUPS_2x4, dimensions={0}
  %ag-done = bf16[32,128]{1,0} all-gather-done(%ag-start)
  %cp = f32[4,64]{1,0} collective-permute(%y), source_target_pairs={{0,1},{1,0}}
  %k = bf16[8,128]{1,0} custom-call(%x), custom_call_target="tpu_custom_call"
  ROOT %t = (s32[], bf16[8,128]{1,0}) tuple(%i, %k)
}

%cond.2 (p.2: (s32[])) -> pred[] {
  %p.2 = (s32[]) parameter(0)
  %n = s32[] get-tuple-element(%p.2), index=0
  %lim = s32[] get-tuple-element(%p.2), index=1
  ROOT %lt.2 = pred[] compare(%n, %lim), direction=LT
}

%body.2 (p.3: (s32[])) -> (s32[]) {
  %p.3 = (s32[]) parameter(0)
  %rs = f32[16]{0} reduce-scatter(%z), dimensions={0}, to_apply=%add
  ROOT %t.2 = (s32[]) tuple(%n)
}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

ENTRY %main (arg: bf16[8,128]) -> bf16[8,128] {
  %arg = bf16[8,128]{1,0} parameter(0)
  %ar = f32[1024]{0} all-reduce(%g), replica_groups={{0,1,2,3}}, to_apply=%add
  %w = (s32[], bf16[8,128]{1,0}) while(%init), condition=%cond, body=%body
  %w2 = (s32[]) while(%init2), condition=%cond.2, body=%body.2, TRIP_3
  %w3 = (s32[]) while(%init3), condition=%cond.2, body=%body.2
  %cb = () custom-call(%arg), custom_call_target="xla_ffi_python_cpu_callback"
  ROOT %r = bf16[8,128]{1,0} get-tuple-element(%w), index=1
}
""".replace("TRIP_3", TRIP_3).replace("GROUPS_2x4", "replica_groups=[2,4]<=[8]")


def test_counts_ops_and_executions_through_trip_counts():
    s = hlo.summarize(TEXT)
    c = s.collectives
    assert (c["all-reduce"].ops, c["all-reduce"].executed, c["all-reduce"].bytes) == (1, 1, 4096)
    # Inside the 6-step scan: the async all-gather counts once per step, at its -done half.
    assert (c["all-gather"].ops, c["all-gather"].executed) == (1, 6)
    assert c["all-gather"].bytes == 6 * 32 * 128 * 2
    assert (c["collective-permute"].executed, c["collective-permute"].bytes) == (6, 6 * 4 * 64 * 4)
    # body.2 runs in a loop with a recorded trip count (3) and in one without (1).
    assert (c["reduce-scatter"].ops, c["reduce-scatter"].executed) == (1, 4)
    assert c["all-to-all"].ops == 0
    assert (s.mosaic.ops, s.mosaic.executed) == (1, 6)
    assert s.host_callbacks.ops == 1
    assert s.unknown_trip_loops == 1
    # Bytes sent per device, from each op's group (module num_partitions=8 when it names none):
    assert c["all-reduce"].wire_bytes == 4096 * 2 * 3 // 4  # {{0,1,2,3}}: g = 4
    assert c["all-gather"].wire_bytes == 6 * 32 * 128 * 2 * 3 // 4  # [2,4]<=[8] on its start
    assert c["reduce-scatter"].wire_bytes == 4 * 16 * 4 * 7  # no groups: all 8 devices
    assert c["collective-permute"].wire_bytes == c["collective-permute"].bytes


@pytest.mark.parametrize(
    "shape, expected",
    [("bf16[8,128]{1,0:T(8,128)(2,1)}", 2048), ("(f32[4], s8[3,2])", 22), ("pred[]", 1)],
)
def test_shape_bytes(shape, expected):
    assert hlo.shape_bytes(shape) == expected


def test_no_entry_is_an_error():
    with pytest.raises(ValueError, match="no ENTRY computation"):
        hlo.summarize("HloModule m\n")


@pytest.mark.parametrize(
    "line, expected",
    [
        ("all-reduce(%x), replica_groups={{0,8},{1,9}}, to_apply=%add", 2),
        ("all-gather-start(%x), replica_groups={{0,1,2,3,4,5,6,7}}, dimensions={0}", 8),
        ("all-to-all(%x), replica_groups=[4,16]<=[64], dimensions={0}", 16),
        ("all-reduce(%x), replica_groups=[8,8]<=[4,2,8]T(1,0,2), to_apply=%add", 8),
        ("all-reduce(%x), replica_groups={}, to_apply=%add", 64),
        ("all-reduce(%x), replica_groups=mesh['axis_0'=1,'axis_1'=64] {'axis_1'}, x=1", 64),
        ("all-gather(%x), replica_groups=mesh['a'=4,'b'=4,'c'=4] {'a','c'}, dims={0}", 16),
        ("all-to-all(%x), replica_groups=mesh['a'=4,'b'=16] {'b':(2)4}, dims={0}", 4),
        ("all-reduce(%x), replica_groups=mesh['axis_0'=256] {}, to_apply=%add", 1),
        (
            "all-reduce(%x), replica_groups=mesh['a'=2,'b'=1,'c'=2], device_ids="
            "([2,2]T(1,0)) {'a'}",
            2,
        ),
        ("collective-permute(%x), source_target_pairs={{0,1},{1,0}}", 64),
    ],
)
def test_group_size(line, expected):
    assert hlo.group_size(line, devices=64) == expected


def test_unreadable_groups_are_an_error_not_a_guess():
    with pytest.raises(ValueError, match=r"unrecognised .replica_groups="):
        hlo.group_size("all-reduce(%x), replica_groups=<4 x 2>", devices=8)


@pytest.mark.parametrize(
    "kind, expected",  # 1 MiB result over 4 devices
    [("all-gather", 3 * 2**18), ("all-to-all", 3 * 2**18), ("reduce-scatter", 3 * 2**20),
     ("all-reduce", 3 * 2**19), ("collective-permute", 2**20)],
)  # fmt: skip
def test_wire_bytes_closed_forms(kind, expected):
    assert hlo.wire_bytes(kind, 2**20, 4) == expected
    assert hlo.wire_bytes(kind, 2**20, 1) == (2**20 if kind == "collective-permute" else 0)


def test_wire_bytes_of_a_program_compiled_for_a_tpu_slice():
    """Each collective of a shard_map compiled for v5p (16 chips as 2 x 8), against its
    closed form: nothing but the group sizes XLA wrote decides the figures."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from lcm.compile import topology

    mesh = jax.sharding.Mesh(np.array(topology.devices("v5p:2x2x4")).reshape(2, 8), ("d", "c"))

    def step(x):  # x: f32[256, 512] per device, 512 KiB
        full = jax.lax.all_gather(x, "c", tiled=True)  # 4 MiB over c (8)
        part = jax.lax.psum_scatter(full, "c", scatter_dimension=0, tiled=True)  # 512 KiB
        total = jax.lax.psum(part, ("d", "c"))  # over all 16
        swapped = jax.lax.all_to_all(total, "c", 0, 0, tiled=True)
        return jax.lax.ppermute(swapped, "c", [(i, (i + 1) % 8) for i in range(8)])

    spec = P(("d", "c"))
    x = jax.ShapeDtypeStruct((16 * 256, 512), jnp.float32, sharding=NamedSharding(mesh, spec))
    fn = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=spec, out_specs=spec))
    c = hlo.summarize(fn.lower(x).compile().as_text()).collectives
    shard = 256 * 512 * 4
    assert {k: v.executed for k, v in c.items() if v.ops} == dict.fromkeys(
        ["all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute"], 1
    )
    assert c["all-gather"].wire_bytes == 8 * shard * 7 // 8
    assert c["reduce-scatter"].wire_bytes == shard * 7
    assert c["all-reduce"].wire_bytes == shard * 2 * 15 // 16
    assert c["all-to-all"].wire_bytes == shard * 7 // 8
    assert c["collective-permute"].wire_bytes == shard
