"""``lcm.compile.hlo``: collectives, Mosaic kernels and host callbacks read from HLO text."""

import pytest

from lcm.compile import hlo

# A hand-written optimized module: an entry with one all-reduce and a while loop (a scan of 6
# steps) whose body holds an async all-gather, a collective-permute and a Mosaic call, and a
# second loop whose trip count is recorded by XLA; a data-dependent loop counts once.
TRIP_3 = 'backend_config={"known_trip_count":{"n":"3"}}'
TEXT = """HloModule jit_step, is_scheduled=true

%cond (p: (s32[], bf16[8,128])) -> pred[] {
  %c6 = s32[]{:T(128)} constant(6)
  %p = (s32[]{:T(128)}, bf16[8,128]{1,0}) parameter(0)
  %i = s32[]{:T(128)} get-tuple-element(%p), index=0
  ROOT %lt = pred[]{:T(512)} compare(%i, %c6), direction=LT
}

%body (p.1: (s32[], bf16[8,128])) -> (s32[], bf16[8,128]) {
  %p.1 = (s32[], bf16[8,128]{1,0}) parameter(0)
  %x = bf16[8,128]{1,0} get-tuple-element(%p.1), index=1
  %ag-start = (bf16[8,128]{1,0}, bf16[32,128]{1,0}) all-gather-start(%x), dimensions={0}
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
""".replace("TRIP_3", TRIP_3)


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


@pytest.mark.parametrize(
    "shape, expected",
    [("bf16[8,128]{1,0:T(8,128)(2,1)}", 2048), ("(f32[4], s8[3,2])", 22), ("pred[]", 1)],
)
def test_shape_bytes(shape, expected):
    assert hlo.shape_bytes(shape) == expected


def test_no_entry_is_an_error():
    with pytest.raises(ValueError, match="no ENTRY computation"):
        hlo.summarize("HloModule m\n")
