"""Smoke test of experiments.kv_eviction at toy size: a few training steps, one budget.

The script runs in a subprocess, as from the command line, on one CPU device.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow  # the policies are tested in tests/inference; the report by from_results_test
def test_toy_run_writes_table_plot_and_json(tmp_path):
    out = tmp_path / "out"
    args = ["--steps", "4", "--batch-size", "2", "--samples", "1", "--depths", "0.5"]
    args += ["--budgets", "64", "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run(
        [sys.executable, "-m", "experiments.kv_eviction.run", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((out / "kv_eviction.json").read_text())["rows"]
    policies = {r["policy"] for r in rows}
    assert {"full", "streaming_llm", "h2o", "snapkv"} <= policies, policies
    full = next(r for r in rows if r["policy"] == "full")
    assert all(r["cache_bytes"] < full["cache_bytes"] for r in rows if r["policy"] != "full")
    assert (out / "kv_eviction.png").stat().st_size > 0
    report = (out / "kv_eviction.md").read_text()
    assert "| h2o | 64 |" in report and "- Commit: `" in report
