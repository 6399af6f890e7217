"""``python -m lcm.eval`` end to end on configs/tiny.py with a random init."""

import json
import os
import subprocess
import sys

import pytest

from lcm import config as config_lib
from lcm.eval import runner

from .conftest import TINY

ARGS = [
    "--config.eval.init=random",
    "--config.eval.lengths=(128, 384)",
    "--config.eval.depths=(0.0, 1.0)",
    "--config.eval.samples_per_cell=1",
    "--config.eval.num_documents=2",
    "--config.eval.tasks=('perplexity', 'passkey', 'kv_retrieval', 'fwe')",
]


def test_cli_writes_results_plots_and_table(tmp_path):
    cmd = [sys.executable, "-m", "lcm.eval", f"--config={TINY}", f"--workdir={tmp_path}", *ARGS]
    cmd += [
        "--config.model.positional.rope_scaling.rope_type=linear",
        "--config.model.positional.rope_scaling.factor=2",
    ]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    done = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=300, cwd=config_lib.REPO_ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "perplexity [rope+linear2] protocol=truncate documents=2" in done.stdout
    assert "passkey" in done.stdout and "kv_retrieval" in done.stdout
    out = tmp_path / "eval"
    results = json.loads((out / "results.json").read_text())
    assert results["init"] == "random" and results["seed"] == 0
    assert results["positional"]["rope_scaling"]["rope_type"] == "linear"
    ppl = results["perplexity"]
    assert ppl["protocol"] == "truncate" and ppl["num_documents"] == 2
    assert [r["tokens_scored"] for r in ppl["results"]] == [256, 768]
    assert {c["depth"] for c in results["tasks"]["passkey"]["cells"]} == {0.0, 1.0}
    assert results["tasks"]["fwe"]["depths"] == [None]
    for name in ("perplexity.png", "heatmap_passkey.png", "heatmap_kv_retrieval.png"):
        assert (out / name).stat().st_size > 1000
    assert not (out / "heatmap_fwe.png").exists()


def test_bad_config_fails_before_work(tmp_path):
    config = config_lib.load_config(TINY)
    config.eval.tasks = ("perplexity", "babilong")
    with pytest.raises(ValueError, match=r"config.eval.tasks = \('perplexity', 'babilong'\)"):
        runner.evaluate(config, str(tmp_path), log=lambda s: None)
    assert not (tmp_path / "eval").exists()
