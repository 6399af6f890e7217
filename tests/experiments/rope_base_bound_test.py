"""experiments.rope_base_bound: the bound table against the paper (fast), toy run (slow)."""

import pytest

from experiments.rope_base_bound import run as rbb
from lcm import config as config_lib

CONFIG = config_lib.REPO_ROOT / "experiments" / "rope_base_bound" / "configs.py"


def test_bound_table_matches_the_paper_at_1k_and_keeps_b_nonnegative():
    (row,) = rbb.bound_table([1024], log=lambda s: None)
    assert row["paper"] == 4.3e3
    assert abs(row["computed"] / 4.3e3 - 1) < 0.01  # paper Table 2: 4.3e3 for 1k
    assert row["min_B_at_paper"] > 0
    assert row["fit"] == pytest.approx(0.0424 * 1024**1.628)


def test_configs_differ_only_in_the_base_and_bases_straddle_the_bound():
    low, *_, high = (config_lib.load_config(f"{CONFIG}:{b:g}") for b in (1e2, 1e3, 1e4))
    assert (low.model.positional.base, high.model.positional.base) == (1e2, 1e4)
    low.unlock()
    low.model.positional.base = 1e4
    assert low.to_json() == high.to_json()
    bound = rbb.base_bound.min_base(high.seq_len, high.model.head_dim)
    assert rbb.PLAN["default"]["bases"] == (1e2, 1e3, 1e4) and 1e3 < bound < 1e4
    assert rbb._first_negative(1e2, 256, 32) == "m = 28"
    assert rbb._first_negative(1e4, 256, 32) == "none up to 256"


@pytest.mark.slow  # trains 2 tiny models and evaluates retrieval: minutes on a shared CPU
def test_toy_run_writes_table_and_plot(tmp_path, run_toy):
    text = run_toy("rope_base_bound", tmp_path)
    assert "| 1024 | 4.29e+03 | 4.3e+03 |" in text and "## Provenance" in text
