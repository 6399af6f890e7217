"""Bad input through ``lcm.train.loop.train``: each case fails with a ``ValueError`` naming the
key and what is allowed BEFORE anything is compiled (no XLA backend compilation event), and
malformed JSONL lines are counted and reported, not fatal.

The table of every invalid value lives in tests/config_test.py (``validate`` alone); this file
checks that the training entry point stops on them before work starts.
"""

import jax
import pytest

from lcm.train import loop

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@pytest.fixture
def compiles():
    """The list of backend compilations that happen during the test."""
    events = []

    def listen(event, duration, **kwargs):
        del duration, kwargs
        if event == BACKEND_COMPILE:
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    yield events
    jax.monitoring.unregister_event_duration_listener(listen)


def _jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _cases(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    bad_jsonl = _jsonl(tmp_path / "bad.jsonl", ['{"text": 1}', "not json", '{"body": "x"}'])
    return {
        "missing data path": (
            {"data__path": str(tmp_path / "nowhere")},
            f"config.data.path = '{tmp_path / 'nowhere'}': no such file or directory",
        ),
        "empty corpus": (
            {"data__path": str(empty)},
            f"config.data.path = '{empty}': is an empty corpus",
        ),
        "only malformed jsonl": (
            {"data__corpus": "jsonl", "data__path": bad_jsonl},
            f"config.data.path = '{bad_jsonl}': no valid JSONL documents",
        ),
        "scheme x impl": (
            {
                "model__positional__name": "alibi",
                "model__attention__impl": "pallas",
                "model__attention__block_kv": 64,
            },
            "config.model.attention.impl = 'pallas': attention impl 'pallas' cannot serve "
            "positional scheme 'alibi'",
        ),
        "mesh vs devices": (
            {"mesh__shape": (3, 1, 1, 1)},
            "config.mesh.shape = (3, 1, 1, 1): product 3 != 8 devices",
        ),
        "seq_len vs block": (
            {"seq_len": 48},
            "config.seq_len = 48: must be a multiple of model.attention.block_q = 32",
        ),
        "heads vs kv heads": (
            {"model__num_heads": 3, "model__num_kv_heads": 2},
            "config.model.num_heads = 3: must be a multiple of model.num_kv_heads = 2",
        ),
        "wrong type": (
            {"train__num_steps": "10"},
            "config.train.num_steps = '10': must be of type int",
        ),
    }


CASES = (
    "missing data path", "empty corpus", "only malformed jsonl", "scheme x impl",
    "mesh vs devices", "seq_len vs block", "heads vs kv heads", "wrong type",
)  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_before_compiling(tmp_path, tiny, compiles, case):
    overrides, message = _cases(tmp_path)[case]
    config = tiny()
    config.unlock()
    for key, value in overrides.items():
        *parents, leaf = key.split("__")
        node = config
        for part in parents:
            node = node[part]
        node._fields[leaf] = value  # bypass ConfigDict's type checks, as a bad file could
    with pytest.raises(ValueError) as err:
        loop.train(config, str(tmp_path / "run"), log=lambda s: None)
    assert message in str(err.value)
    assert compiles == [], f"{len(compiles)} compilation(s) before the error"
    assert not (tmp_path / "run" / "checkpoints").exists() or not any(
        (tmp_path / "run" / "checkpoints").iterdir()
    )


@pytest.mark.slow
def test_malformed_jsonl_lines_are_counted_and_reported(tmp_path, tiny):
    good = [f'{{"text": "{"word " * 60}{i}"}}' for i in range(12)]
    path = _jsonl(tmp_path / "mixed.jsonl", [*good[:5], "{oops", '{"text": null}', *good[5:]])
    lines = []
    config = tiny(data__corpus="jsonl", data__path=path, train__num_steps=1)
    loop.train(config, str(tmp_path / "run"), log=lines.append)
    assert "skipped 2 malformed line(s), first: mixed.jsonl:6, mixed.jsonl:7" in lines[0]
