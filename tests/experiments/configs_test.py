"""Every config variant of the studies' ``configs.py`` loads by path and validates.

These are the configs ``python -m lcm.train --config experiments/<study>/configs.py:<arg>``
loads, as ``tests/config_test.py`` checks those under ``configs/``.
"""

import itertools

import pytest

from experiments.data_recipes import configs as data_recipes
from experiments.length_extrapolation import configs as positional
from lcm import config as config_lib

SETTINGS = ("toy", "default", "full")
VARIANTS = [  # (study, get_config argument, devices the mesh is checked against or None)
    *(
        (study, f"{scheme},{setting}", 8 if setting == "default" else None)
        for study in ("length_extrapolation", "passkey_depth")
        for scheme, setting in itertools.product(positional.SCHEMES, SETTINGS)
    ),
    *(
        ("rope_base_bound", f"{base},{setting}", 8 if setting == "default" else None)
        for base, setting in itertools.product(("100", "1000", "10000"), SETTINGS)
    ),
    *(
        ("data_recipes", f"{recipe},{setting}", None)
        for recipe, setting in itertools.product(data_recipes.RECIPES, SETTINGS)
    ),
    ("activation_memory", "full,512", 64),
    ("activation_memory", "save_attention,2048", 64),
    ("pod_scale", "Llama-3-8B,1048576,4,64", 64),
    ("pod_scale", "Llama-3.2-1B,32768,64,64", 64),
    ("pod_scale", "Llama-3-70B,33554432,1,512", 512),
]


@pytest.mark.parametrize(("study", "arg", "devices"), VARIANTS, ids=lambda x: str(x))
def test_every_study_config_validates(study, arg, devices):
    path = config_lib.REPO_ROOT / "experiments" / study / "configs.py"
    config_lib.validate(config_lib.load_config(f"{path}:{arg}"), num_devices=devices)


def test_settings_apply_on_top_of_the_scheme():
    toy = config_lib.load_config(
        f"{config_lib.REPO_ROOT}/experiments/length_extrapolation/configs.py:alibi,toy"
    )
    assert (toy.seq_len, toy.data.seq_len, toy.model.d_model) == (32, 32, 32)
    assert toy.model.positional.name == "alibi"
    default = positional.get_config("rope")
    assert default.seq_len == 256 and default.train.peak_flops == 1e9
