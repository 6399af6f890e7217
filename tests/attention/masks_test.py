"""Masks: dense values against hand-written matrices; tile classes against the dense mask.

The oracle for classification is the dense boolean matrix of the same positions: a tile called
FULL must be all visible, EMPTY must be all hidden, and with contiguous positions an atomic mask
must classify exactly (PARTIAL only when the tile really is mixed).
"""

import ast
import functools
import pathlib

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given

from kernels_pallas import mask as kernel_mask
from lcm.attention import masks, tiles
from lcm.attention.masks import EMPTY, FULL, PARTIAL

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _dense(mask, t=6, s=6, offset=0):
    return np.asarray(mask.dense(np.arange(t) + offset, np.arange(s)))


def test_dense_matches_hand_written_matrices():
    tril = np.tril(np.ones((6, 6), bool))
    np.testing.assert_array_equal(_dense(masks.Causal()), tril)
    np.testing.assert_array_equal(_dense(masks.Full()), np.ones((6, 6), bool))
    band = np.array(
        [[abs(i - j) <= 1 if j <= i else j - i <= 2 for j in range(6)] for i in range(6)]
    )
    np.testing.assert_array_equal(_dense(masks.SlidingWindow(1, 2)), band)
    np.testing.assert_array_equal(_dense(masks.SlidingWindow(1)), band & tril)
    chunks = np.kron(np.eye(3, dtype=bool), np.ones((2, 2), bool)) & tril
    np.testing.assert_array_equal(_dense(masks.ChunkedCausal(2)), chunks)
    sink = np.zeros((6, 6), bool)
    sink[:, :2] = True
    np.testing.assert_array_equal(_dense(masks.Sink(2)), sink)
    streaming = (masks.SlidingWindow(1) | masks.Sink(2)) & masks.Causal()
    np.testing.assert_array_equal(_dense(streaming), ((band & tril) | sink) & tril)
    # Positions, not indices: the last 2 queries of a 6-key cache.
    np.testing.assert_array_equal(_dense(masks.Causal(), t=2, offset=4), tril[4:])


def test_masks_are_hashable_values():
    a = (masks.SlidingWindow(4) | masks.Sink(2)) & masks.Causal()
    b = (masks.SlidingWindow(4) | masks.Sink(2)) & masks.Causal()
    assert a == b and hash(a) == hash(b)
    assert {a: 1}[b] == 1
    assert masks.SlidingWindow(4) != masks.SlidingWindow(5)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: masks.SlidingWindow(-1), "SlidingWindow.left = -1: must be an integer >= 0"),
        (lambda: masks.SlidingWindow(2, 1.5), "SlidingWindow.right = 1.5: must be an integer"),
        (lambda: masks.ChunkedCausal(0), "ChunkedCausal.size = 0: must be an integer >= 1"),
        (lambda: masks.Sink(-3), "Sink.n = -3: must be an integer >= 0"),
    ],
)
def test_bad_arguments_raise(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()


def test_combining_with_a_non_mask_raises():
    with pytest.raises(TypeError, match="mask & needs another Mask"):
        masks.Causal() & True


ATOMS = [
    masks.Causal(),
    masks.Full(),
    masks.SlidingWindow(0),
    masks.SlidingWindow(3),
    masks.SlidingWindow(2, 5),
    masks.ChunkedCausal(4),
    masks.ChunkedCausal(7),
    masks.Sink(1),
    masks.Sink(6),
]


@st.composite
def mask_trees(draw, depth=2):
    if depth == 0 or draw(st.booleans()):
        return draw(st.sampled_from(ATOMS))
    a, b = draw(mask_trees(depth=depth - 1)), draw(mask_trees(depth=depth - 1))
    return a & b if draw(st.booleans()) else a | b


@st.composite
def tile_cases(draw):
    batch = draw(st.integers(1, 2))
    t_blocks, s_blocks = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    cq, ck = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    t, s = t_blocks * cq, s_blocks * ck
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    layout = draw(st.sampled_from(["contiguous", "permuted", "random"]))
    if layout == "contiguous":  # queries are the last t of max(t, s) positions
        q_pos = np.tile(np.arange(t) + max(s - t, 0), (batch, 1))
        k_pos = np.tile(np.arange(s), (batch, 1))
    elif layout == "permuted":
        q_pos = np.stack([rng.permutation(t) for _ in range(batch)])
        k_pos = np.stack([rng.permutation(s) for _ in range(batch)])
    else:
        q_pos, k_pos = rng.integers(0, 30, (batch, t)), rng.integers(0, 30, (batch, s))
    if draw(st.booleans()):
        q_seg, k_seg = rng.integers(0, 3, (batch, t)), rng.integers(0, 3, (batch, s))
    else:
        q_seg, k_seg = np.ones((batch, t), int), np.ones((batch, s), int)
    mask = draw(mask_trees())
    return mask, cq, ck, layout, *(x.astype(np.int32) for x in (q_pos, k_pos, q_seg, k_seg))


def _dense_tiles(dense, cq, ck):
    b, t, s = dense.shape
    return dense.reshape(b, t // cq, cq, s // ck, ck).transpose(0, 1, 3, 2, 4)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _classify(mask, cq, ck, q_pos, k_pos, q_seg, k_seg):
    # One compile per example instead of one per eager op and shape.
    return tiles.classify_tiles(
        mask, tiles.block_ranges(q_pos, q_seg, cq), tiles.block_ranges(k_pos, k_seg, ck)
    )


@given(tile_cases())
def test_tile_classes_agree_with_dense_mask(case):
    mask, cq, ck, layout, q_pos, k_pos, q_seg, k_seg = case
    classes = np.asarray(_classify(mask, cq, ck, q_pos, k_pos, q_seg, k_seg))
    dense = np.asarray(masks.visibility(mask, q_pos, k_pos, q_seg, k_seg))
    blocks = _dense_tiles(dense, cq, ck)
    assert blocks[classes == FULL].all()
    assert not blocks[classes == EMPTY].any()
    exact = layout == "contiguous" and mask in ATOMS and (q_seg == 1).all() and (k_seg == 1).all()
    if exact:
        partial = blocks[classes == PARTIAL]
        assert (partial.any(axis=(-1, -2)) & ~partial.all(axis=(-1, -2))).all()


def test_padding_blocks_are_never_full():
    # One segment, but the last key block holds padding: FULL would drop its mask.
    pos = np.arange(8, dtype=np.int32)[None]
    seg = np.array([[1, 1, 1, 1, 1, 1, 0, 0]], np.int32)
    ranges = tiles.block_ranges(pos, seg, 4)
    classes = np.asarray(tiles.classify_tiles(masks.Full(), ranges, ranges))
    np.testing.assert_array_equal(classes[0], [[FULL, PARTIAL], [PARTIAL, PARTIAL]])


def test_classification_at_one_million_tokens():
    t, block = 1 << 20, 2048
    pos = jnp.arange(t, dtype=jnp.int32)[None]
    ranges = tiles.block_ranges(pos, jnp.ones_like(pos), block)
    nb = t // block
    causal = tiles.visit_lists(tiles.classify_tiles(masks.Causal(), ranges, ranges))
    assert int(causal.full_count.sum()) == nb * (nb - 1) // 2  # strictly below the diagonal
    assert int(causal.partial_count.sum()) == nb  # the diagonal
    window = tiles.visit_lists(tiles.classify_tiles(masks.SlidingWindow(4096), ranges, ranges))
    # Window 4096 = 2 blocks: block i sees blocks i-2 (partial), i-1 (full), i (diagonal).
    assert int(window.full_count.sum()) == nb - 1
    assert int(window.partial_count.sum()) == 2 * nb - 2


def _module_level_names(path):
    names = set()
    for node in ast.parse(path.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        for target in targets:
            for leaf in ast.walk(target) if target is not None else ():
                if isinstance(leaf, ast.Name):
                    names.add(leaf.id)
    return names


def test_tile_kinds_are_defined_once_in_kernels_pallas():
    """``lcm`` re-exports the kernels' tile kinds; no module assigns its own."""
    kinds = {"EMPTY", "PARTIAL", "FULL"}
    homes = sorted(
        str(path.relative_to(ROOT))
        for package in ("lcm", "kernels_pallas")
        for path in (ROOT / package).rglob("*.py")
        if kinds & _module_level_names(path)
    )
    assert homes == ["kernels_pallas/mask.py"]
    lcm_kinds = (masks.EMPTY, masks.PARTIAL, masks.FULL)
    assert lcm_kinds == (kernel_mask.EMPTY, kernel_mask.PARTIAL, kernel_mask.FULL) == (0, 1, 2)


# Each lcm mask with the kernels' PositionalMask that means the same visibility.
SAME_MASKS = [
    (masks.Full(), kernel_mask.PositionalMask()),
    (masks.Causal(), kernel_mask.PositionalMask(causal=True)),
    (masks.SlidingWindow(3), kernel_mask.PositionalMask(window_left=3, window_right=0)),
    (masks.SlidingWindow(2, 5), kernel_mask.PositionalMask(window_left=2, window_right=5)),
    (
        masks.SlidingWindow(3) & masks.Causal(),
        kernel_mask.PositionalMask(causal=True, window_left=3),
    ),
    (masks.ChunkedCausal(4), kernel_mask.PositionalMask(causal=True, chunk=4)),
    (
        masks.SlidingWindow(4, 2) & masks.ChunkedCausal(3),
        kernel_mask.PositionalMask(causal=True, window_left=4, window_right=2, chunk=3),
    ),
    (
        (masks.SlidingWindow(3) | masks.Sink(2)) & masks.Causal(),
        kernel_mask.PositionalMask(causal=True, window_left=3, sink=2),
    ),
    (
        (masks.ChunkedCausal(5) | masks.Sink(3)) & masks.Causal(),
        kernel_mask.PositionalMask(causal=True, chunk=5, sink=3),
    ),
]


def _boxes(lo=-4, hi=14):
    """Every box ``[q_lo, q_hi] x [k_lo, k_hi]`` with bounds in ``[lo, hi)``, as broadcast rows and
    columns ``[n, 1]`` / ``[1, n]``, contiguous or not."""
    lows, highs = np.triu_indices(hi - lo)
    lows, highs = (lows + lo).astype(np.int32), (highs + lo).astype(np.int32)
    return lows[:, None], highs[:, None], lows[None], highs[None]


@pytest.mark.parametrize("as_array", [np.asarray, jnp.asarray], ids=["numpy", "jax"])
@pytest.mark.parametrize("lcm_mask, kernel", SAME_MASKS, ids=[repr(m) for m, _ in SAME_MASKS])
def test_lcm_classification_equals_the_kernels(lcm_mask, kernel, as_array):
    """``Mask.classify`` and ``PositionalMask.tile_kind`` agree on every box of a grid."""
    box = tuple(as_array(x) for x in _boxes())
    assert np.asarray(lcm_mask.dense(np.arange(-4, 14), np.arange(-4, 14))).tolist() == (
        np.asarray(kernel.allows(np.arange(-4, 14)[:, None], np.arange(-4, 14)[None])).tolist()
    )  # the pair means the same mask
    lcm_kinds = np.asarray(lcm_mask.classify(*box))
    kernel_kinds = np.broadcast_to(np.asarray(kernel.tile_kind(*box)), lcm_kinds.shape)
    np.testing.assert_array_equal(lcm_kinds, kernel_kinds)
    # The grid is not degenerate: every kind occurs unless the mask hides nothing.
    assert set(np.unique(lcm_kinds).tolist()) == (
        {FULL} if kernel.is_full else {EMPTY, PARTIAL, FULL}
    )
