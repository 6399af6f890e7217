"""experiments.packed_balance: tile work per device against brute force."""

import numpy as np
import pytest

from experiments.packed_balance import run as pb
from lcm.attention import layouts


def _brute_force(seg, pos, layout, devices, block):
    """``[ring step, device]`` counts of tiles blockwise computes, from each tile's tokens: tiles
    with real tokens on both sides, overlapping segment-id ranges and the earliest key position
    not after the latest query position (causal); and the tiles holding a visible pair."""
    perm = (layouts.balanced_permutation(seg, devices) if layout == "balanced"
            else layouts.layout_permutation(seg.size, devices, layout))  # fmt: skip
    seg, pos = seg[perm].reshape(devices, -1, block), pos[perm].reshape(devices, -1, block)
    computed, visible = np.zeros((2, devices, devices), int)
    for step in range(devices):
        for r in range(devices):
            for qs, qp in zip(seg[r], pos[r], strict=True):
                for ks, kp in zip(
                    seg[(r - step) % devices], pos[(r - step) % devices], strict=True
                ):
                    qr, kr = qs != 0, ks != 0
                    if not (qr.any() and kr.any()):
                        continue
                    overlap = qs[qr].min() <= ks[kr].max() and ks[kr].min() <= qs[qr].max()
                    computed[step, r] += overlap and kp[kr].min() <= qp[qr].max()
                    pairs = (qs[:, None] == ks[None]) & qr[:, None] & (kp[None] <= qp[:, None])
                    visible[step, r] += pairs.any()
    return computed, visible


@pytest.mark.parametrize("layout", layouts.LAYOUTS)
def test_tile_work_matches_brute_force(layout):
    seg = np.array([1] * 37 + [2] * 50 + [3] * 29 + [0] * 12)
    starts = np.r_[True, seg[1:] != seg[:-1]]
    index = np.arange(seg.size)
    pos = index - np.maximum.accumulate(np.where(starts, index, 0))
    computed, visible = _brute_force(seg, pos, layout, 4, 8)
    work = pb.tile_work(seg, pos, layout, 4, 8)
    np.testing.assert_array_equal(work, computed)
    assert np.all(work >= visible)  # a tile with a visible pair is never skipped


def test_imbalance_of_a_known_work_table():
    work = np.array([[4, 2], [0, 2]])  # [ring step, device]
    got = pb.imbalance(work)
    assert got == {"ring": (4 + 2) / 4 - 1, "critical": 6, "all_gather": 0.0, "tiles": 8}
