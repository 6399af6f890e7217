"""experiments.ring_scaling: tile counts against brute force, the fit search, a toy run."""

import json

import numpy as np
import pytest

from experiments.ring_scaling import run as rs_run
from lcm.attention import layouts


@pytest.fixture(scope="module")
def rs():
    return rs_run


def _brute_force_counts(t, devices, layout, block):
    """Tiles with at least one causal (q >= k) pair, blocks padded with invisible tokens."""
    length = t // devices
    c = min(block, length)
    pos = layouts.layout_permutation(t, devices, layout).reshape(devices, length)
    nb = -(-length // c)
    counts = np.zeros((devices, devices), int)
    for s in range(devices):
        for r in range(devices):
            q, k = pos[r], pos[(r - s) % devices]
            counts[s, r] = sum(
                bool((q[i * c : (i + 1) * c, None] >= k[None, j * c : (j + 1) * c]).any())
                for i in range(nb)
                for j in range(nb)
            )
    return counts


@pytest.mark.parametrize("layout", layouts.FIXED)
@pytest.mark.parametrize(("t", "devices", "block"), [(64, 2, 16), (96, 4, 16), (48, 4, 8)])
def test_tile_counts_match_brute_force(rs, layout, t, devices, block):
    np.testing.assert_array_equal(
        rs.tile_counts(t, devices, layout, block), _brute_force_counts(t, devices, layout, block)
    )


def test_balance_closed_form(rs):
    # Contiguous, 4 devices of nb = 2 blocks: device r computes r * nb^2 + nb (nb + 1) / 2 tiles
    # (3, 7, 11, 15; mean 9); zigzag and striped are balanced when chunks align with blocks.
    contiguous = rs.balance(rs.tile_counts(64, 4, "contiguous", 8))
    assert contiguous["tiles_total"] == 36 and contiguous["balance"] == pytest.approx(15 / 9)
    assert contiguous["critical"] == pytest.approx(15 / 9)  # step s: max is 3 then 4, 4, 4
    for layout in ("striped", "zigzag"):
        assert rs.balance(rs.tile_counts(64, 4, layout, 8))["critical"] == pytest.approx(1.0)


def test_largest_t_search(rs, monkeypatch):
    # Affine memory: bytes = 1000 + 10 T fits 1e6 up to T = 99900; on the multiple-of-64 grid
    # (2 devices x block 16 x 2) the search, 3 bisections past the overshoot, lands within
    # 1/8 of the answer from below.
    monkeypatch.setattr(rs, "fits_bytes", lambda t, d, b: 1000 + 10 * t)
    fit = rs.largest_t(2, 16, 1e6, start=1000)
    assert fit["largest_T"] % 64 == 0 and 1000 + 10 * fit["largest_T"] <= 1e6
    assert fit["largest_T"] >= 99900 * (1 - 1 / 8) and fit["next_miss"] * 10 + 1000 > 1e6
    assert rs.largest_t(2, 16, 100.0, start=1000)["largest_T"] is None


@pytest.mark.multidevice
def test_toy_run_writes_report(rs, tmp_path, devices8):
    rs.main(
        ["--lengths", "64", "--devices", "1", "2", "--block", "16", "--reps", "1",
         "--layouts", "contiguous", "zigzag", "--budget-gib", "0", "--out", str(tmp_path)]
    )  # fmt: skip
    report = (tmp_path / "ring_scaling.md").read_text()
    assert "| 64 | 2 | zigzag |" in report and "| 64 | 1 | contiguous |" in report
    data = json.loads((tmp_path / "ring_scaling.json").read_text())
    assert [r["devices"] for r in data["records"]] == [1, 2, 2]
    assert "- Commit: `" in report
    rs.main(["--from-results", "--out", str(tmp_path)])
    assert (tmp_path / "ring_scaling.md").read_text() == report
    assert (tmp_path / "ring_scaling.png").stat().st_size > 0
    assert (tmp_path / "ring_scaling_balance.png").stat().st_size > 0
