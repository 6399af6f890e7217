"""experiments.length_extrapolation: the run plan (fast) and the toy run end to end (slow)."""

import json

import pytest

from experiments.length_extrapolation import run as le
from lcm import config as config_lib


def test_every_variant_is_a_valid_config_that_differs_only_in_position():
    rope = le.scheme_config("rope", "default")
    base = json.loads(rope.to_json())
    variants = le.training_free(rope, rope.seq_len)
    assert set(variants) == {
        "rope+pi4", "rope+ntk4", "rope+yarn4", "rope+dynamic4", "self_extend", "lm_infinite"
    }  # fmt: skip
    for label, config in variants.items():
        config_lib.validate(config)
        got = json.loads(config.to_json())
        assert {k: v for k, v in got.items() if k != "model"} == {
            k: v for k, v in base.items() if k != "model"
        }, label
        assert {k: v for k, v in got["model"].items() if k != "positional"} == {
            k: v for k, v in base["model"].items() if k != "positional"
        }, label
    yarn = variants["rope+yarn4"].model.positional.rope_scaling
    assert (yarn.rope_type, yarn.factor, yarn.original_max_position_embeddings) == ("yarn", 4, 256)
    # SelfExtend maps 16L onto positions below L: W + (16L - W) / G < L.
    se = variants["self_extend"].model.positional
    assert se.self_extend_window + (16 * 256 - se.self_extend_window) // se.self_extend_group < 256


def test_schemes_share_everything_but_the_positional_block():
    configs = {s: json.loads(le.scheme_config(s, "default").to_json()) for s in le.SCHEMES}
    for scheme, config in configs.items():
        del config["model"]["positional"]
        assert config == configs["rope"], scheme


def test_fine_tune_keeps_tokens_per_step_and_starts_from_rope(tmp_path):
    rope = le.scheme_config("rope", "default")
    pi = le.training_free(rope, 256)["rope+pi4"]
    ft = le.fine_tune_config(pi, tmp_path / "rope", 256, 40)
    config_lib.validate(ft)
    assert ft.seq_len == ft.data.seq_len == 1024
    assert ft.data.batch_size * ft.seq_len == rope.data.batch_size * rope.seq_len
    assert ft.train.init_from == str(tmp_path / "rope") and ft.train.num_steps == 40
    assert ft.model.positional.rope_scaling.rope_type == "linear"
    control = le.fine_tune_config(rope, tmp_path / "rope", 256, 40, factor=1)
    config_lib.validate(control)
    assert (control.seq_len, control.data.batch_size) == (256, rope.data.batch_size)
    assert control.model.positional.to_json() == rope.model.positional.to_json()


def test_checks_quote_the_numbers():
    rows = {k: {128: 3.0, 256: 2.0, 512: 9.0, 1024: 50.0} for k in le.SCHEMES}
    for k in ("rope+pi4", "rope+ntk4", "rope+yarn4", "rope+dynamic4", "self_extend",
              "lm_infinite", "rope+pi4 ft", "rope+yarn4 ft", "rope ft 4L",
              "rope ft L"):  # fmt: skip
        rows[k] = {128: 3.0, 256: 2.0, 512: 4.0, 1024: 5.0}
    lines = le._checks(rows, 256)
    assert lines[0] == ("- RoPE just past L: perplexity 2 at L, 9 at 2L, 50 at 4L (x4.50 at 2L).")


@pytest.mark.slow  # trains 7 tiny models and evaluates 13 variants: minutes on a shared CPU
def test_toy_run_writes_table_and_plot(tmp_path, run_toy):
    text = run_toy("length_extrapolation", tmp_path)
    assert "| rope+yarn4 ft |" in text and "## Provenance" in text
