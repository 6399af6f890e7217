"""Recipes through ``load_data``: selection from config, determinism, exact resume, curriculum."""

import itertools
import json

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lcm import config as config_lib
from lcm import data as data_lib
from lcm.data import corpora

from .conftest import write_text_corpus

RECIPES = {
    "chunk": dict(
        data__packing="concat", data__document_masking=False, data__mask_first_token=False
    ),
    "concat_by_repo": dict(data__recipe="concat_by_repo", data__length_mix=((0, 1.0),)),
    "structured_path": dict(data__recipe="structured", data__packing="concat"),
    "structured_bm25": dict(data__recipe="structured", data__structured_relation="bm25"),
    "untie_knots": dict(  # the chunk-order task needs >= 19 tokens per row
        data__recipe="untie_knots",
        model__vocab_size=263,
        data__utk_sort_task=True,
        seq_len=32,
        data__batch_size=2,
    ),
    "decomposition": dict(data__recipe="decomposition", data__decomposition_min=4),
}


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.parametrize("name", list(RECIPES))
def test_deterministic_and_resumes_exactly_from_a_saved_state(make_config, name):
    data = data_lib.load_data(make_config(**RECIPES[name]))
    first = _take(data.train_iterator(), 9)
    again = data_lib.load_data(make_config(**RECIPES[name]))  # a restart: same seed, same data
    _same(_take(again.train_iterator(), 9), first)
    for stop in (1, 4):
        it = data.train_iterator()
        _take(it, stop)
        state = json.loads(json.dumps(it.get_state()))  # JSON-able, as orbax stores it
        resumed = again.train_iterator()
        resumed.set_state(state)
        _same(_take(resumed, 9 - stop), first[stop:])
    other = data_lib.load_data(make_config(train__seed=1, **RECIPES[name]))
    assert any(
        not np.array_equal(a["inputs"], b["inputs"])
        for a, b in zip(_take(other.train_iterator(), 9), first, strict=True)
    )
    for b in first:
        assert b["inputs"].size == 4 * 16  # constant tokens per step
        assert all(v.dtype == np.int32 and v.shape == b["inputs"].shape for v in b.values())


def test_orbax_checkpoint_of_a_recipe_iterator(make_config, tmp_path):
    data = data_lib.load_data(make_config(**RECIPES["untie_knots"]))
    it = data.train_iterator()
    _take(it, 3)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        manager.wait_until_finished()
    expected = _take(it, 4)
    fresh = data.train_iterator()
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    _same(_take(fresh, 4), expected)


def test_eval_batches_do_not_depend_on_the_recipe(make_config):
    plain = list(data_lib.load_data(make_config()).eval_iterator())
    for name in ("concat_by_repo", "structured_bm25", "decomposition"):
        _same(list(data_lib.load_data(make_config(**RECIPES[name])).eval_iterator()), plain)
    utk = make_config(data__recipe="untie_knots", model__vocab_size=263)
    _same(list(data_lib.load_data(utk).eval_iterator()), plain)


def test_decomposition_curriculum_caps_the_bucket_then_shortest_first(make_config):
    config = make_config(
        data__curriculum=((4, 3), (8, 2)), data__batch_size=1, **RECIPES["decomposition"]
    )
    batches = _take(data_lib.load_data(config).train_iterator(), 9)
    lengths = [b["inputs"].shape[1] for b in batches]
    assert lengths[:3] == [4, 4, 4] and set(lengths[3:5]) <= {4, 8} and max(lengths[5:]) <= 16
    assert {b["inputs"].size for b in batches} == {16}


def test_hosts_share_recipe_batches(make_config):
    config = make_config(**RECIPES["decomposition"])
    hosts = [data_lib.load_data(config, process_index=i, process_count=2) for i in range(2)]
    a, b = (_take(h.train_iterator(), 6) for h in hosts)
    for x, y in zip(a, b, strict=True):  # lockstep: the same bucket on every host, half the rows
        assert x["inputs"].shape == y["inputs"].shape and x["inputs"].size == 2 * 16
        assert not np.array_equal(x["inputs"], y["inputs"])


def test_stdlib_files_corpus_and_repository_split(tmp_path):
    root = tmp_path / "lib"
    for rel in ("os.py", "json/__init__.py", "json/decoder.py", "email/mime/text.py", "abc.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"# {rel}\n")
    corpus = corpora.stdlib_files_corpus(root)
    names = [d.name for d in corpus.documents]
    assert names == ["abc.py", "email/mime/text.py", "json/__init__.py", "json/decoder.py", "os.py"]
    assert corpus.documents[3].text == "# FILE: json/decoder.py\n# json/decoder.py\n"
    assert (
        corpus.manifest["split_by"] == "repository" and corpus.manifest["corpus"] == "stdlib_files"
    )
    assert corpus.manifest["sha256"] != corpora.stdlib_corpus(root).manifest["sha256"]
    groups = [corpora.repository(n) for n in names]
    for seed in range(10):
        held = corpora.split_by_name(names, 0.5, seed, groups=groups)
        assert held[2] == held[3]  # the json files go together
        assert 1 <= len({g for g, h in zip(groups, held, strict=True) if h}) == 2  # round(2.0)
    np.testing.assert_array_equal(  # without groups: exactly the per-name split
        corpora.split_by_name(names, 0.4, 3), corpora.split_by_name(names, 0.4, 3, groups=names)
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"data__recipe": "prolong"},
            "config.data.recipe = 'prolong': allowed: 'documents', "
            "'concat_by_repo', 'structured', 'untie_knots', 'decomposition'",
        ),
        (
            {"data__mask_first_token": False},
            "config.data.packing = 'first_fit': must be 'concat' "
            "when data.mask_first_token = False",
        ),
        (
            {
                "data__mask_first_token": False,
                "data__packing": "concat",
                "data__recipe": "untie_knots",
                "model__vocab_size": 300,
            },
            "config.data.recipe = 'untie_knots': mask_first_token = False applies to: 'documents', "
            "'concat_by_repo', 'structured'",
        ),
        (
            {"data__length_mix": ((0, 0.5), (0, 0.5))},
            "config.data.length_mix = ((0, 0.5), (0, 0.5)):"
            " must be ((0, w0), (min_tokens, w1), ...) with increasing min_tokens, weights >= 0 "
            "summing to 1",
        ),
        ({"data__length_mix": ((10, 1.0),)}, "config.data.length_mix = ((10, 1.0),): must be"),
        (
            {"data__recipe": "structured", "data__synthetic_share": 0.25},
            "config.data.synthetic_share = 0.25: must be 0 with data.recipe = 'structured'",
        ),
        (
            {"data__structured_relation": "dense"},
            "config.data.structured_relation = 'dense': allowed: 'path', 'bm25'",
        ),
        ({"data__structured_top_k": 0}, "config.data.structured_top_k = 0: must be a positive"),
        (
            {"data__utk_chunk_probs": (0.5, 0.6)},
            "config.data.utk_chunk_probs = (0.5, 0.6): must be "
            "probabilities of 1, 2, ... chunks: numbers >= 0 summing to 1",
        ),
        (
            {"data__recipe": "untie_knots"},
            "config.model.vocab_size = 256: must be >= 263 for "
            "data.recipe = 'untie_knots' (256 byte ids and 7 markers)",
        ),
        (
            {"data__decomposition_min": 96},
            "config.data.decomposition_min = 96: must be a power of two",
        ),
        (
            {"data__recipe": "decomposition", "seq_len": 384},
            "config.seq_len = 384: must be a power of two for data.recipe = 'decomposition'",
        ),
        (
            {"data__recipe": "decomposition", "data__decomposition_min": 512},
            "config.data.decomposition_min = 512: must be <= seq_len = 256",
        ),
        (
            {"data__recipe": "decomposition", "data__decomposition_min": 64},
            "config.data.decomposition_min = 64: must be a multiple of "
            "model.attention.block_q = 128 for model.attention.impl = 'blockwise'",
        ),
        (
            {"data__recipe": "decomposition", "data__curriculum": ((192, 10),)},
            "config.data.curriculum = ((192, 10),): lengths must be powers of two >= "
            "data.decomposition_min = 128 for data.recipe = 'decomposition'",
        ),
    ],
)
def test_config_validation_messages(overrides, message):
    config = config_lib.base_config()
    config.unlock()
    config.update_from_flattened_dict({k.replace("__", "."): v for k, v in overrides.items()})
    with pytest.raises(ValueError) as info:
        config_lib.validate(config)
    assert message in str(info.value)


@pytest.mark.parametrize("mask_first_token", [True, False])
def test_concat_resumes_from_json_state_at_every_step(make_config, mask_first_token):
    """Regression: grain's concat-then-split misread JSON'd "no remainder" states (lists)."""
    config = make_config(data__packing="concat", data__mask_first_token=mask_first_token)
    data = data_lib.load_data(config)
    first = _take(data.train_iterator(), 10)
    for stop in range(1, 8):
        it = data.train_iterator()
        _take(it, stop)
        resumed = data.train_iterator()
        resumed.set_state(json.loads(json.dumps(it.get_state())))
        _same(_take(resumed, 3), first[stop : stop + 3])


@pytest.mark.parametrize("name", ["chunk", "concat_by_repo", "structured_path"])
def test_batches_mix_units_and_rows_do_not_continue_each_other(make_config, tmp_path, name):
    """Regression: the unit recipes once streamed each unit whole into consecutive rows, so a
    batch was one stretch of one document and adjacent rows continued each other."""
    docs = write_text_corpus(tmp_path / "long", lengths=(150, 120, 100, 90, 130, 110, 80, 140))
    config = make_config(data__path=str(tmp_path / "long"), **RECIPES[name])
    batches = _take(data_lib.load_data(config).train_iterator(), 12)
    texts = list(docs.values())

    def text(row, seg):
        return "".join(chr(t) for t in row[seg > 0])

    def sources(row_text):  # documents holding one of the row's 6-grams (random letters)
        grams = {row_text[i : i + 6] for i in range(len(row_text) - 5)}
        return {d for d, t in enumerate(texts) if any(g in t for g in grams)}

    rows = [text(r, s) for b in batches for r, s in zip(b["inputs"], b["segment_ids"], strict=True)]
    continued = sum(any(a + b in t for t in texts) for a, b in itertools.pairwise(rows))
    assert continued <= 0.2 * (len(rows) - 1), continued  # old code: 11 to 36 of 47
    per_batch = [set().union(*(sources(r) for r in rows[i : i + 4])) for i in range(0, 48, 4)]
    assert np.mean([len(s) for s in per_batch]) >= 2.5  # old code: 1.3 to 1.5 documents
