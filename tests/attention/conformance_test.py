"""Conformance: every registered attention implementation against ``reference``.

For each name in ``ATTENTION.names()``, ``ENTRIES`` says how to call it (``attend`` options) and
what it computes in reference terms (``Entry.computes``: the reference mask of each equal group
of query heads, given the mask passed to ``attend``). Its grid is ``CASES`` filtered by its
``Capabilities``: segment ids need ``segments``, N != K needs ``gqa``, a ``logits_fn`` hook needs
``custom_logits``; the lse and its cotangent are checked where ``returns_lse``, gradients where
``differentiable``, and a ``needs_mesh`` implementation runs under a (data=2, context=4) mesh of
the 8 simulated devices (on lengths that divide over the ring). Outputs, lse and ``jax.vjp``
gradients w.r.t. q, k, v for random cotangents must match reference within ``ATTENTION_TOL``
(tests/conftest.py); rows that see no key must be exactly zero, with zero dq.

Adding an implementation: ``test_every_implementation_has_an_entry`` fails until ``ENTRIES``
names it. Give its ``options`` and, unless it attends with the mask it is given, ``computes``;
restrict ``only_masks`` if it takes only some, list in ``excluded`` (with the reason) the cases it
cannot take, and name in ``fast`` the few cases of the default suite (the rest run under
``@pytest.mark.slow``). An implementation that is not reference attention in any setting (e.g.
learned gates) names the test with its own oracle in ``own_oracle`` and is skipped with ``skip``.
"""

import contextlib
import dataclasses
import functools
import pathlib
import zlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcm.attention import ATTENTION, attend, masks
from lcm.attention.sparse import moba, shifted
from lcm.parallel import mesh as mesh_lib
from lcm.parallel import sharding
from tests.conftest import ATTENTION_TOL, assert_close

ROOT = pathlib.Path(__file__).resolve().parents[2]
CAUSAL = masks.Causal()
RING = 4  # devices on the mesh's context axis for needs_mesh implementations


@dataclasses.dataclass(frozen=True)
class SoftCapAlibi:
    """Test-only logits hook: ALiBi-like distance bias (Press et al. 2021) and a tanh soft cap.

    The cap makes logits a non-linear function of q.k, so a tiled backward's ``jax.vjp`` of the
    hook is really exercised; the slopes differ per head unless ``per_head`` is False (then
    implementations that split heads over devices can run it).
    """

    slope: float = 0.5
    cap: float = 0.0  # 0 = no cap
    per_head: bool = True

    def __call__(self, q, k, q_pos, k_pos, *, scale):
        b, t, n, h = q.shape
        kh = k.shape[2]
        dots = jnp.einsum(
            "BTKGH,BSKH->BKGTS",
            q.reshape(b, t, kh, n // kh, h),
            k,
            preferred_element_type=jnp.float32,
        ).reshape(b, n, t, k.shape[1])
        logits = scale * dots
        if self.cap:
            logits = self.cap * jnp.tanh(logits / self.cap)
        slopes = self.slope ** (1.0 + jnp.arange(n, dtype=jnp.float32) * self.per_head)
        distance = jnp.abs(q_pos[:, :, None] - k_pos[:, None, :]).astype(jnp.float32)
        return logits - slopes[None, :, None, None] * distance[:, None]


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    mask: masks.Mask = CAUSAL
    t: int = 20
    s: int = 20
    n: int = 4
    k: int | None = None  # kv heads; None: 2 where the implementation has gqa, else n
    dtype: object = jnp.float32
    positions: str = "arange"  # arange | permuted
    segments: str = "none"  # none | packed | unmatched
    logits_fn: object = None
    lse: bool = False  # also return the lse (where the implementation can)


CASES = (
    Case("causal", lse=True),
    Case("full", masks.Full()),
    Case("window", masks.SlidingWindow(5)),
    Case("window_bidirectional", masks.SlidingWindow(3, 6)),
    Case("chunked", masks.ChunkedCausal(6)),
    Case("sink", masks.Sink(3)),
    Case("streaming", (masks.SlidingWindow(4) | masks.Sink(2)) & CAUSAL),
    Case("chunked_or_window", masks.ChunkedCausal(8) | masks.SlidingWindow(2)),
    Case("mha", k=4),
    Case("mqa", k=1),
    Case("prefill", t=8, s=24),  # chunked prefill: queries at the last 8 of 24 positions
    Case("decode", t=1, s=23),
    Case("longer_queries", masks.Full(), t=24, s=8),
    Case("permuted", positions="permuted", lse=True),
    Case("packed", segments="packed", lse=True),
    Case("packed_full", masks.Full(), segments="packed"),
    Case("packed_window_mqa", masks.SlidingWindow(3), k=1, segments="packed"),
    Case("unmatched_rows", segments="unmatched", lse=True),
    Case("logits_fn", logits_fn=SoftCapAlibi(), lse=True),
    Case("logits_fn_capped", masks.Full(), t=12, s=16, logits_fn=SoftCapAlibi(0.7, 2.0)),
    Case("logits_fn_same_heads", logits_fn=SoftCapAlibi(0.7, 2.0, per_head=False), lse=True),
    Case("bf16", dtype=jnp.bfloat16),
    Case("bf16_packed_window", masks.SlidingWindow(3), dtype=jnp.bfloat16, segments="packed"),
)
UNSEEN_ROWS = slice(8, 15)  # query rows of "unmatched" segments that see no key


@dataclasses.dataclass(frozen=True)
class EarlierChunks(masks.Mask):
    """Keys in an earlier chunk of ``size`` positions than the query's (HSA's retrievable keys).

    Only ``visible`` (reference's dense path) is defined.
    """

    size: int

    def visible(self, q, k):
        return k // self.size < q // self.size


def _as_given(mask):
    return (mask,)


@dataclasses.dataclass(frozen=True)
class Entry:
    """How one implementation is checked against reference."""

    options: dict = dataclasses.field(default_factory=dict)  # attend(..., **options)
    # The reference mask of each equal group of query heads (and of kv heads, or all of K = 1),
    # given the mask passed to attend: what the implementation computes in reference terms.
    computes: Callable[[masks.Mask], tuple[masks.Mask, ...]] = _as_given
    only_masks: tuple[masks.Mask, ...] | None = None  # the masks it takes (None: every mask)
    excluded: dict = dataclasses.field(default_factory=dict)  # case name -> why it cannot run
    fast: tuple[str, ...] = ()  # the cases of the default suite; the others are @slow
    own_oracle: str = ""  # the test that checks it against its own (non-reference) oracle
    skip: str = ""  # why it is not in the grid at all


BLOCKS = dict(block_q=8, block_kv=6)  # tiny tiles that do not divide the lengths
NOT_SELF = "self-attention only (T == S)"
ENTRIES = {
    "reference": Entry(
        skip="the oracle itself; xla (jax.nn.dot_product_attention) is its independent check"
    ),
    "xla": Entry(fast=("window_bidirectional", "packed_window_mqa", "unmatched_rows", "bf16")),
    "blockwise": Entry(
        options=BLOCKS,
        fast=(
            "streaming",
            "decode",
            "permuted",
            "packed",
            "unmatched_rows",
            "logits_fn_capped",
            "bf16_packed_window",
        ),
    ),
    # TPU interpreter on CPU (jax's generic interpreter): slow, so one default case; the
    # block-sparse kernel and 128-blocks run in tests/attention/pallas_test.py.
    "pallas": Entry(fast=("packed",)),
    # Context parallelism on (data=2, context=4); layouts and the HLO's collectives are checked
    # in tests/attention/ring_test.py and context_test.py. Ulysses splits the 4 heads over 4
    # devices (the 2 or 1 KV heads repeated); usp runs Ulysses over 2 and a ring of 2.
    "ring": Entry(options=dict(block_q=4, block_kv=4), fast=("packed",)),
    "all_gather": Entry(options=dict(block_q=4, block_kv=4), fast=("packed",)),
    "ulysses": Entry(options=dict(block_q=4, block_kv=4), fast=("packed",)),
    "usp": Entry(options=dict(block_q=4, block_kv=4, degree=2), fast=("packed",)),
    # StreamingLLM: the first 2 positions and the last 6 up to the query (itself included).
    "sink_window": Entry(
        options=dict(sink=2, window=6, **BLOCKS),
        computes=lambda mask: (mask & (masks.SlidingWindow(5) | masks.Sink(2)),),
        fast=("causal",),  # (the packed documents are too short for the window to matter)
    ),
    # LongLoRA S2-Attn: causal groups of 8 in the first half of the heads, groups shifted by
    # half a group in the second (ShiftedChunkedCausal is checked against the paper's rule in
    # tests/attention/sparse/static_test.py).
    "s2_attn": Entry(
        options=dict(group_size=8, **BLOCKS),
        computes=lambda mask: (
            mask & masks.ChunkedCausal(8),
            mask & shifted.ShiftedChunkedCausal(8, 4),
        ),
        fast=("causal",),  # (in the packed documents the unshifted groups are plain causal)
    ),
    # top_k covers every block of 6: MoBA selects all earlier blocks, i.e. causal attention.
    # test_moba_matches_reference_on_its_selected_blocks checks top_k < blocks; its selection
    # and the authors' naive code are checked in tests/attention/sparse/moba_test.py.
    "moba": Entry(
        options=dict(block_size=6, top_k=8),
        only_masks=(CAUSAL,),
        excluded={
            "permuted": "blocks are index ranges of the key row, so with shuffled positions "
            "'every earlier block' is not the causal mask",
        },
        fast=("packed",),
    ),
    # HSA mixes one softmax per retrieved chunk by retrieval weights (own oracle: hsa_reference
    # in hsa_test.py). With chunks of 10 in a row of 20, queries of chunk 1 retrieve chunk 0
    # alone, at weight 1: reference on the earlier-chunk mask (chunk 0 rows see no key).
    "hsa": Entry(
        options=dict(chunk_size=10, top_k=2),
        computes=lambda mask: (mask & EarlierChunks(10),),
        only_masks=(CAUSAL,),
        excluded={
            "permuted": "chunks are index ranges of the key row, the mask here reads positions",
            "packed": "positions restart in each document, and chunks are index ranges",
            "prefill": NOT_SELF,
            "decode": NOT_SELF,
        },
        fast=("causal",),  # (in unmatched_rows chunk 0 offers each query one key at most)
        own_oracle="tests/attention/sparse/hsa_test.py",
    ),
    # NSA: a linen module with parameters (compression MLP, branch gates); its compressed,
    # selected and window branches are mixed by learned gates, not one softmax over a mask.
    "nsa": Entry(
        own_oracle="tests/attention/sparse/nsa_test.py",
        skip="has parameters; three gated branches checked against nsa_reference in nsa_test.py",
    ),
}


def grid(name: str) -> list[Case]:
    """The cases of ``CASES`` implementation ``name`` takes, per its capabilities and entry."""
    caps, entry = ATTENTION.get(name).capabilities, ENTRIES[name]
    cases = []
    for case in CASES:
        case = dataclasses.replace(
            case,
            k=case.k or (2 if caps.gqa else case.n),
            lse=case.lse and caps.returns_lse,
        )
        if (
            case.name in entry.excluded
            or (entry.only_masks is not None and case.mask not in entry.only_masks)
            or (case.segments != "none" and not caps.segments)
            or (case.k != case.n and not caps.gqa)
            or (case.logits_fn is not None and not caps.custom_logits)
            or (getattr(case.logits_fn, "per_head", False) and not caps.per_head_logits)
            or (caps.needs_mesh and (case.t % RING or case.s % RING))
        ):
            continue
        cases.append(case)
    return cases


def _params():
    for name in ATTENTION.names():
        entry = ENTRIES.get(name)
        if entry is None:
            continue  # test_every_implementation_has_an_entry fails
        if entry.skip:
            yield pytest.param(name, None, id=name, marks=pytest.mark.skip(reason=entry.skip))
            continue
        for case in grid(name):
            marks = [] if case.name in entry.fast else [pytest.mark.slow]
            if ATTENTION.get(name).capabilities.needs_mesh:
                marks.append(pytest.mark.multidevice)
            yield pytest.param(name, case, id=f"{name}-{case.name}", marks=marks)


def inputs(case: Case, batch: int = 2):
    """``q, k, v, cotangent, q_pos, k_pos, segment ids (or None)`` for ``case`` (``k`` set)."""
    rng = np.random.default_rng(zlib.crc32(case.name.encode()))
    h = 8
    q = rng.standard_normal((batch, case.t, case.n, h))
    k = rng.standard_normal((batch, case.s, case.k, h))
    v = rng.standard_normal((batch, case.s, case.k, h))
    ct = rng.standard_normal((batch, case.t, case.n, h))
    q, k, v, ct = (jnp.asarray(x, case.dtype) for x in (q, k, v, ct))
    # Queries are the last t of the s positions (decode and chunked prefill), or the first s.
    k_pos = np.tile(np.arange(case.s), (batch, 1))
    q_pos = np.tile(np.arange(case.t) + max(case.s - case.t, 0), (batch, 1))
    if case.positions == "permuted":  # a load-balanced token order: same tokens, shuffled
        order = np.stack([rng.permutation(case.s) for _ in range(batch)])
        q_pos = k_pos = np.take_along_axis(k_pos, order, 1)
    seg = None
    if case.segments == "packed":  # documents of lengths 7, 8, then padding; positions restart
        ids = np.array([1] * 7 + [2] * 8 + [0] * (case.s - 15))
        seg = (np.tile(ids, (batch, 1)), np.tile(ids, (batch, 1)))
        q_pos = k_pos = np.tile(np.r_[np.arange(7), np.arange(case.s - 7)], (batch, 1))
    elif case.segments == "unmatched":  # query ids 3 and 0 (UNSEEN_ROWS) meet no key of theirs
        q_ids = np.array([1] * 8 + [3] * 4 + [0] * 3 + [2] * (case.t - 15))
        k_ids = np.array([1] * 9 + [2] * (case.s - 9))
        seg = (np.tile(q_ids, (batch, 1)), np.tile(k_ids, (batch, 1)))
    as_int = lambda x: jnp.asarray(x, jnp.int32)  # noqa: E731
    seg = None if seg is None else tuple(as_int(x) for x in seg)
    return q, k, v, ct, as_int(q_pos), as_int(k_pos), seg


def attention_fn(impl, mask, case, return_lse=False, **options):
    """``f(q, k, v, q_pos, k_pos, seg) -> (out, lse or None)`` calling ``attend``."""

    def f(q, k, v, q_pos, k_pos, seg):
        result = attend(
            q, k, v, mask=mask, impl=impl, q_pos=q_pos, k_pos=k_pos,
            q_segment_ids=None if seg is None else seg[0],
            kv_segment_ids=None if seg is None else seg[1], logits_fn=case.logits_fn,
            return_lse=return_lse, **options,
        )  # fmt: skip
        return result if return_lse else (result, None)

    return f


def vjp(fn, q, k, v, ct, q_pos, k_pos, seg, ct_lse=None, grads=True):
    """Jitted ``(out, lse, dq, dk, dv)`` of ``fn`` (positions and segment ids traced; lse and
    the gradients None where not asked for)."""

    @jax.jit
    def run(q, k, v, ct, ct_lse, q_pos, k_pos, seg):
        if not grads:
            return (*fn(q, k, v, q_pos, k_pos, seg), None, None, None)
        (out, lse), pullback = jax.vjp(lambda q, k, v: fn(q, k, v, q_pos, k_pos, seg), q, k, v)
        return (out, lse, *pullback((ct, ct_lse)))

    return run(q, k, v, ct, ct_lse, q_pos, k_pos, seg)


def _reference_fn(groups, case, return_lse):
    """Reference with ``groups[i]`` as the mask of the i-th equal group of query heads."""

    def f(q, k, v, q_pos, k_pos, seg):
        n, kh, g = q.shape[2], k.shape[2], len(groups)
        assert n % g == 0 and (kh == 1 or kh % g == 0), (n, kh, g)
        outs, lses = [], []
        for i, mask in enumerate(groups):
            heads = slice(i * n // g, (i + 1) * n // g)
            kv_heads = slice(None) if kh == 1 else slice(i * kh // g, (i + 1) * kh // g)
            out, lse = attention_fn("reference", mask, case, return_lse=True)(
                q[:, :, heads], k[:, :, kv_heads], v[:, :, kv_heads], q_pos, k_pos, seg
            )
            outs.append(out)
            lses.append(lse)
        return jnp.concatenate(outs, 2), (jnp.concatenate(lses, 2) if return_lse else None)

    return f


def _lse_cotangent(case):
    rng = np.random.default_rng(zlib.crc32(case.name.encode()) + 1)
    return jnp.asarray(rng.standard_normal((2, case.t, case.n)), jnp.float32) if case.lse else None


@functools.cache
def _expected(case, groups):
    """Reference ``(out, lse, dq, dk, dv)`` in float32 on the case's (possibly bf16) values;
    cached, since several implementations share a case."""
    q, k, v, ct, q_pos, k_pos, seg = inputs(case)
    f32 = (x.astype(jnp.float32) for x in (q, k, v, ct))
    fn = _reference_fn(groups, case, case.lse)
    return vjp(fn, *f32, q_pos, k_pos, seg, ct_lse=_lse_cotangent(case))


def _ring_mesh(devices):
    return mesh_lib.make_mesh(
        {"axes": mesh_lib.MESH_AXES, "shape": (2, 1, RING, 1), "axis_types": "auto"},
        devices=devices,
    )


@pytest.mark.parametrize("impl, case", list(_params()))
def test_matches_reference(impl, case, request):
    caps, entry = ATTENTION.get(impl).capabilities, ENTRIES[impl]
    q, k, v, ct, q_pos, k_pos, seg = inputs(case)
    want = _expected(case, entry.computes(case.mask))
    fn = attention_fn(impl, case.mask, case, return_lse=case.lse, **entry.options)
    context = contextlib.nullcontext()
    if caps.needs_mesh:
        context = sharding.use_mesh(_ring_mesh(request.getfixturevalue("devices8")))
    with context:
        got = vjp(fn, q, k, v, ct, q_pos, k_pos, seg, _lse_cotangent(case), caps.differentiable)
    for name, g, w in zip(("out", "lse", "dq", "dk", "dv"), got, want, strict=True):
        if w is None or (name.startswith("d") and not caps.differentiable):
            continue
        what = f"{impl} {case.name} {name}"
        if name == "lse":  # float32, and -inf exactly for rows that see no key
            assert g.dtype == jnp.float32, what
            g, w = np.asarray(g), np.asarray(w)
            np.testing.assert_array_equal(np.isneginf(g), np.isneginf(w), err_msg=what)
            g, w = g[np.isfinite(w)], w[np.isfinite(w)]
        else:
            assert g.dtype == case.dtype, what
        assert_close(g, w, ATTENTION_TOL[case.dtype], what)
    if case.segments == "unmatched":  # rows that see no key: zeros, with zero gradients
        for what, x in (("out", got[0]), ("dq", got[2])):
            if x is not None:
                np.testing.assert_array_equal(np.asarray(x[:, UNSEEN_ROWS]), 0.0, err_msg=what)


def test_every_implementation_has_an_entry():
    """A new implementation needs an entry in ENTRIES (entries may name ones not yet registered)."""
    missing = [name for name in ATTENTION.names() if name not in ENTRIES]
    assert not missing, f"add conformance entries to ENTRIES in {__file__} for: {missing}"


def test_entries_name_real_cases_and_oracles():
    """Names in ``fast`` must be cases of the grid (a typo would drop a default case silently),
    names in ``excluded`` cases, and ``own_oracle`` files must exist."""
    names = {case.name for case in CASES}
    for impl, entry in ENTRIES.items():
        assert set(entry.excluded) <= names, impl
        assert not entry.own_oracle or (ROOT / entry.own_oracle).is_file(), impl
        if impl in ATTENTION and not entry.skip:
            runs = {case.name for case in grid(impl)}
            assert entry.fast and set(entry.fast) <= runs, (impl, set(entry.fast) - runs)


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: it holds an array
class _Keep:
    """Logits hook: ``scale * q.k`` where ``keep [B, N, T, S]``, else ``-inf`` (an explicit
    per-head mask, which a position ``Mask`` cannot express)."""

    keep: jax.Array

    def __call__(self, q, k, q_pos, k_pos, *, scale):
        b, t, n, h = q.shape
        kh = k.shape[2]
        dots = jnp.einsum(
            "BTKGH,BSKH->BKGTS", q.reshape(b, t, kh, n // kh, h), k, precision="highest"
        ).reshape(b, n, t, k.shape[1])
        return jnp.where(self.keep, scale * dots, -jnp.inf)


def test_moba_matches_reference_on_its_selected_blocks():
    """MoBA with top_k (2) below the block count is reference attention on the blocks it
    selects: its own and the best earlier one, per query and head (``moba_selection``)."""
    case = Case("moba_selected", k=2, segments="packed")
    q, k, v, ct, q_pos, k_pos, seg = inputs(case)
    options = dict(block_size=4, top_k=2)
    ids, valid = moba.moba_selection(q, k, kv_segment_ids=seg[1], **options)
    # keep[b, n, t, s]: key s lies in a valid selected block of query t, head n.
    blocks = np.arange(case.s) // options["block_size"]
    hit = (np.asarray(ids)[..., None] == blocks) & np.asarray(valid)[..., None]  # [B,T,N,M,S]
    keep = jnp.asarray(hit.any(3).transpose(0, 2, 1, 3))
    selected = dataclasses.replace(case, logits_fn=_Keep(keep))
    want = vjp(attention_fn("reference", CAUSAL, selected), q, k, v, ct, q_pos, k_pos, seg)
    got = vjp(attention_fn("moba", CAUSAL, case, **options), q, k, v, ct, q_pos, k_pos, seg)
    tril = np.tril(np.ones((case.t, case.s), bool))
    assert (tril & ~np.asarray(keep)).any()  # some earlier keys are left out: not causal
    for what, g, w in zip(("out", "lse", "dq", "dk", "dv"), got, want, strict=True):
        if w is not None:
            assert_close(g, w, ATTENTION_TOL[jnp.float32], f"moba {what}")
