"""Smoke test of experiments.data_recipes at toy size (seconds of training per recipe).

The script runs in a subprocess, as from the command line: on one CPU device (without the 8
simulated devices of tests/conftest.py) and without registering its toy corpus in this process.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
MODULE = "experiments.data_recipes.run"
ALL_RECIPES = ["chunk", "packed", "concat_by_repo", "structured", "untie_knots", "decomposition"]


def _run(tmp_path, recipes):
    out = tmp_path / "out"
    args = ["--toy", "--out", str(out), "--workdir", str(tmp_path / "work")]
    args += ["--cache_dir", str(tmp_path / "cache"), "--recipes", *recipes]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run(
        [sys.executable, "-m", MODULE, *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((out / "data_recipes.json").read_text())["rows"]
    assert [r["recipe"] for r in rows] == list(recipes)
    report = (out / "data_recipes.md").read_text()
    assert (out / "data_recipes.png").stat().st_size > 0
    for r in rows:
        assert f"| {r['recipe']} |" in report
        assert set(r["perplexity"]) == {"64", "128", "256"}
        assert all(p > 1 for p in r["perplexity"].values()) and r["train_s"] > 0
    assert f"- Command: `.venv/bin/python -m {MODULE} --toy" in report
    assert "load" in report and "- Commit: `" in report
    return rows


@pytest.mark.slow  # the recipes are tested in tests/data; the report by from_results_test
def test_toy_run_of_one_recipe_writes_the_report(tmp_path):
    _run(tmp_path, ["decomposition"])  # variable batch shapes through train and eval


@pytest.mark.slow
def test_toy_run_of_every_recipe(tmp_path):
    _run(tmp_path, ALL_RECIPES)
