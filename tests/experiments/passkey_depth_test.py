"""experiments.passkey_depth: the grid and tables (fast) and the toy run end to end (slow)."""

import numpy as np
import pytest

from experiments.passkey_depth import configs
from experiments.passkey_depth import run as pd
from lcm import config as config_lib

RECORD = {
    "lengths": [256, 512],
    "depths": [0.0, 1.0],
    "cells": [
        {"length": 256, "depth": 0.0, "score": 100.0, "target_nll": 0.5},
        {"length": 256, "depth": 1.0, "score": 50.0, "target_nll": 1.5},
        {"length": 512, "depth": 0.0, "score": None, "skipped": "prompt does not fit"},
        {"length": 512, "depth": 1.0, "score": 0.0, "target_nll": 3.0},
    ],
}


def test_grid_is_depth_by_length_with_nan_for_skipped_cells():
    grid = pd._grid(RECORD, "score")
    np.testing.assert_array_equal(grid, [[100.0, np.nan], [50.0, 0.0]])
    np.testing.assert_array_equal(pd._grid(RECORD, "target_nll"), [[0.5, np.nan], [1.5, 3.0]])


def test_tables_average_over_depths_and_skip_missing_cells():
    text = "\n".join(pd._tables({"rope": RECORD}))
    assert "| rope | 75 | 0 |" in text  # mean of 100 and 50; the skipped cell is left out
    assert "| rope | 1 | 3 |" in text  # answer NLL


def test_every_setting_is_a_valid_eval_config():
    for setting, grid in configs.EVAL.items():
        config = config_lib.validate(configs.get_config(f"rope,{setting}"))
        assert config.eval.tasks == ("passkey",)
        assert config.eval.lengths == grid["eval.lengths"]
        assert config.data.batch_size == configs.TUNE[setting]["data.batch_size"]


@pytest.mark.slow  # trains 5 tiny models and runs passkey on each: minutes on a shared CPU
def test_toy_run_writes_heatmaps(tmp_path, run_toy):
    text = run_toy("passkey_depth", tmp_path)
    assert "**tapa**" in text and "## Provenance" in text
