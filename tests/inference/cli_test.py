"""``python -m lcm.generate``: prompt file in, the generated continuation out."""

import subprocess
import sys

import numpy as np
import pytest

from lcm import generate as cli
from lcm import inference
from lcm import model as model_lib
from lcm.eval import runner
from tests.inference.conftest import make_config


def _config():
    config = make_config()
    config.eval.init = "random"
    config.inference.max_new_tokens = 5
    config.inference.prefill_chunk = 8
    return config


def test_run_prints_generate_of_the_prompt(tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("def f(x):\n    return")
    config = _config()
    text = cli.run(config, str(tmp_path), str(prompt))
    model = model_lib.Transformer(model_lib.build_spec(config))
    params, _ = runner.load_params(config, str(tmp_path), model)
    tokens = np.frombuffer(prompt.read_bytes(), np.uint8).astype(np.int32)
    want = inference.generate(params, config, tokens, max_new_tokens=5)
    assert text == bytes(want.astype(np.uint8).tolist()).decode("utf-8", errors="replace")


def test_missing_prompt_file_and_checkpoint(tmp_path):
    with pytest.raises(ValueError, match=r"--prompt-file = .*no such file"):
        cli.run(_config(), str(tmp_path), str(tmp_path / "missing.txt"))
    prompt = tmp_path / "p.txt"
    prompt.write_text("x")
    config = _config()
    config.eval.init = "checkpoint"
    with pytest.raises(ValueError, match="no readable checkpoint"):
        cli.run(config, str(tmp_path), str(prompt))


@pytest.mark.slow
def test_command_line(tmp_path):
    prompt = tmp_path / "p.txt"
    prompt.write_text("hello")
    args = [sys.executable, "-m", "lcm.generate", "--config", "configs/tiny.py", "--workdir",
            str(tmp_path), "--prompt-file", str(prompt), "--config.eval.init=random",
            "--config.inference.max_new_tokens=3"]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
