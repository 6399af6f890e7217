"""``python -m lcm.eval`` end to end on configs/tiny.py with a random init."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from lcm import config as config_lib
from lcm import hf
from lcm import model as model_lib
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


def test_evaluate_reads_weights_from_hf_path(tmp_path):
    """With no workdir checkpoint, the weights come from ``hf_path``, unchanged."""
    config = config_lib.load_config(str(config_lib.REPO_ROOT / "configs" / "tiny.py"))
    config.model.tie_embeddings = False
    config.eval.tasks = ("perplexity",)
    config.eval.lengths = (32, 64)
    config.eval.num_documents = 2
    model = model_lib.Transformer(model_lib.build_spec(config))
    tokens = jax.numpy.zeros((1, 64), jax.numpy.int32)
    params = nn.unbox(model.init(jax.random.key(7), tokens, tokens)["params"])
    hf.save(params, config, tmp_path / "hf")
    config.model.hf_path = str(tmp_path / "hf")
    lines = []
    from_hf = runner.evaluate(config, str(tmp_path / "a"), log=lines.append)
    assert any("Hugging Face checkpoint" in line for line in lines)
    hf_config, hf_params = hf.with_checkpoint(config)
    direct, _ = runner.load_params(hf_config, str(tmp_path / "b"), model, hf_params)
    for a, b in zip(jax.tree.leaves(direct), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert from_hf["perplexity"]["results"]
