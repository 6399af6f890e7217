"""PositionalMask semantics and its tile classification, against brute force in numpy."""

import hypothesis.strategies as hst
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from kernels_pallas.mask import EMPTY, FULL, PARTIAL, PositionalMask, floor_div, segment_tile_kind


def _dense(mask, q_pos, k_pos):
    return np.asarray(mask.allows(q_pos[:, None], k_pos[None, :]))


def test_allows_examples():
    q = np.arange(6)
    k = np.arange(6)
    causal = _dense(PositionalMask(causal=True), q, k)
    np.testing.assert_array_equal(causal, np.tril(np.ones((6, 6), bool)))
    window = _dense(PositionalMask(causal=True, window_left=1), q, k)
    np.testing.assert_array_equal(
        window, np.tril(np.ones((6, 6), bool)) & np.triu(np.ones((6, 6), bool), -1)
    )
    chunk = _dense(PositionalMask(causal=True, chunk=3), q, k)
    assert chunk[2, 0] and not chunk[3, 2] and chunk[5, 3]
    sink = _dense(PositionalMask(causal=True, window_left=0, sink=2), q, k)
    assert sink[5, 0] and sink[5, 1] and not sink[5, 2] and sink[5, 5] and not sink[0, 1]
    both = _dense(PositionalMask(window_left=1, window_right=2), q, k)
    assert both[2, 4] and not both[2, 5] and both[2, 1] and not both[2, 0]
    assert _dense(PositionalMask(), q, k).all() and PositionalMask().is_full
    # Sinks only re-admit keys that a window or chunk hides.
    assert PositionalMask(sink=3).is_full and _dense(PositionalMask(sink=3), q, k).all()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(window_left=-1), "window_left = -1"),
        (dict(window_right=1.5), "window_right = 1.5"),
        (dict(chunk=0), "chunk = 0"),
        (dict(sink=-2), "sink = -2"),
    ],
)
def test_bad_mask_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PositionalMask(**kwargs)


masks = hst.builds(
    PositionalMask,
    causal=hst.booleans(),
    window_left=hst.none() | hst.integers(0, 40),
    window_right=hst.none() | hst.integers(0, 40),
    chunk=hst.none() | hst.integers(1, 40),
    sink=hst.integers(0, 20),
)


@settings(max_examples=200)
@given(
    mask=masks,
    q0=hst.integers(0, 80),
    k0=hst.integers(0, 80),
    bq=hst.integers(1, 24),
    bk=hst.integers(1, 24),
)
def test_tile_kind_is_sound_and_exact_without_chunks(mask, q0, k0, bq, bk):
    """EMPTY/FULL claims hold for every pair; without chunks PARTIAL is also exact."""
    q, k = np.arange(q0, q0 + bq), np.arange(k0, k0 + bk)
    dense = _dense(mask, q, k)
    kind = int(mask.tile_kind(q[0], q[-1], k[0], k[-1]))
    if kind == EMPTY:
        assert not dense.any()
    elif kind == FULL:
        assert dense.all()
    else:
        assert kind == PARTIAL
        if not mask.chunk and not (
            mask.sink and (mask.window_left is not None or mask.window_right is not None)
        ):
            assert dense.any() and not dense.all()


@pytest.mark.parametrize("d", [1, 3, 128])
def test_floor_div_on_jax_ints_matches_python(d):
    x = np.arange(-300, 300, dtype=np.int32)
    np.testing.assert_array_equal(floor_div(jnp.asarray(x), d), x // d)
    np.testing.assert_array_equal(floor_div(x, d), x // d)
    assert floor_div(-7, 3) == -3


def test_tile_kind_vectorizes_over_numpy_arrays():
    mask = PositionalMask(causal=True)
    starts = 4 * np.arange(3)
    kinds = mask.tile_kind(starts[:, None], starts[:, None] + 3, starts[None], starts[None] + 3)
    np.testing.assert_array_equal(
        kinds, [[PARTIAL, EMPTY, EMPTY], [FULL, PARTIAL, EMPTY], [FULL, FULL, PARTIAL]]
    )


def _summary(seg):
    nz = seg[seg != 0]
    return seg.min(), (nz.min() if nz.size else np.iinfo(np.int32).max), seg.max()


@settings(max_examples=200)
@given(
    q_seg=hst.lists(hst.integers(0, 3), min_size=1, max_size=8),
    k_seg=hst.lists(hst.integers(0, 3), min_size=1, max_size=8),
)
def test_segment_tile_kind_is_sound(q_seg, k_seg):
    q_seg, k_seg = np.array(q_seg), np.array(k_seg)
    dense = (q_seg[:, None] == k_seg[None]) & (q_seg[:, None] != 0)
    kind = int(segment_tile_kind(*_summary(q_seg), *_summary(k_seg)))
    if kind == EMPTY:
        assert not dense.any()
    elif kind == FULL:
        assert dense.all()


@pytest.mark.parametrize(
    "q_seg,k_seg,kind",
    [
        ([1, 1, 2], [3, 3], EMPTY),
        ([0, 0], [0, 1], EMPTY),
        ([1, 2], [0, 0], EMPTY),
        ([2, 2], [2, 2], FULL),
        ([2, 2], [2, 0], PARTIAL),
        ([1, 2], [2, 3], PARTIAL),
    ],
)
def test_segment_tile_kind_examples(q_seg, k_seg, kind):
    assert int(segment_tile_kind(*_summary(np.array(q_seg)), *_summary(np.array(k_seg)))) == kind
