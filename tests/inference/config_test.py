"""``config.inference`` validation: each bad value names the key and what is allowed."""

import pytest

from lcm import config as config_lib
from tests.config_test import _base


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"inference__attention_impl": "blockwise"},
            "config.inference.attention_impl = 'blockwise': allowed: 'reference', 'xla'",
        ),
        (
            {"inference__prefill_chunk": 0},
            "config.inference.prefill_chunk = 0: must be a positive integer",
        ),
        (
            {"inference__cache_policy": "lru", "inference__budget": 8},
            "config.inference.cache_policy = 'lru': allowed: 'caote', 'h2o', 'snapkv', "
            "'streaming_llm'",
        ),
        (
            {"inference__budget": 8},
            "config.inference.budget = 8: must be None without inference.cache_policy",
        ),
        (
            {"inference__cache_policy": "h2o"},
            "config.inference.budget = None: must be a positive integer for 'h2o'",
        ),
        (
            {"inference__cache_policy": "h2o", "inference__budget": 16},
            "config.inference.budget = 16: must be >= inference.recent = 32 for 'h2o'",
        ),
        (
            {"inference__cache_policy": "streaming_llm", "inference__budget": 4},
            "config.inference.budget = 4: must be >= inference.sink + 1 = 5 for 'streaming_llm'",
        ),
        (
            {
                "inference__cache_policy": "caote",
                "inference__caote_base": "snapkv",
                "inference__budget": 20,
            },
            "config.inference.budget = 20: must be >= inference.snapkv_window = 32 for 'caote'",
        ),
        (
            {"inference__caote_base": "streaming_llm"},
            "config.inference.caote_base = 'streaming_llm': allowed: 'h2o', 'snapkv'",
        ),
        ({"inference__snapkv_kernel": 4}, "config.inference.snapkv_kernel = 4: must be odd"),
        ({"inference__top_p": 0.0}, "config.inference.top_p = 0.0: must be in (0, 1]"),
        ({"inference__temperature": -1.0}, "config.inference.temperature = -1.0: must be a"),
        ({"inference__sink": -1}, "config.inference.sink = -1: must be an integer >= 0"),
    ],
)
def test_bad_inference_values(overrides, message):
    with pytest.raises(ValueError) as e:
        config_lib.validate(_base(**overrides))
    assert message in str(e.value)


def test_valid_policy_settings_pass():
    for policy in ("streaming_llm", "h2o", "snapkv", "caote"):
        config_lib.validate(_base(inference__cache_policy=policy, inference__budget=64))
