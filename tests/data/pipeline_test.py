import json

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lcm import data as data_lib
from lcm.data import packing, tokenizers


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_train_batches_shapes_and_manifest(make_config, tmp_path, text_docs):
    config = make_config()
    data = data_lib.load_data(config, workdir=tmp_path / "work")
    batch = next(data.train_iterator())
    assert set(batch) == set(packing.FEATURES)
    for v in batch.values():
        assert v.shape == (4, 16) and v.dtype == np.int32
    written = json.loads((tmp_path / "work" / "data_manifest.json").read_text())
    assert written == data.manifest
    assert written["documents"] == len(text_docs) and written["tokenizer"] == "byte"
    assert written["train_documents"] + written["eval_documents"] == len(text_docs)
    assert written["eval_documents"] == round(0.25 * len(text_docs))


def _segment_texts(batches):
    """The decoded ``inputs`` of every segment of every row."""
    tok = tokenizers.ByteTokenizer()
    out = set()
    for batch in batches:
        for inputs, seg in zip(batch["inputs"], batch["segment_ids"], strict=True):
            out.update(tok.decode(inputs[seg == s]) for s in np.unique(seg[seg != 0]))
    return out


def _piece_texts(texts, min_len=1, length=16):
    """Oracle: the ``inputs`` text of every piece (windows of ``length`` over ``t[:-1]``)."""
    pieces = {
        t[s : min(s + length, len(t) - 1)] for t in texts for s in range(0, len(t) - 1, length)
    }
    return {p for p in pieces if len(p) >= min_len}


def test_eval_split_never_reaches_training(make_config, text_docs):
    data = data_lib.load_data(make_config())
    eval_names = {d.name for d in data.eval_documents()}
    assert eval_names == set(data.manifest["eval_names"]) and eval_names < set(text_docs)
    tok = tokenizers.ByteTokenizer()
    for doc in data.eval_documents():
        np.testing.assert_array_equal(doc.tokens, tok.encode(text_docs[doc.name]))
    train_texts = [t for n, t in text_docs.items() if n not in eval_names]
    eval_texts = [t for n, t in text_docs.items() if n in eval_names]
    seen = _segment_texts(_take(data.train_iterator(), 20))  # > 1 epoch of the train split
    assert seen == _piece_texts(train_texts)  # every training piece, and nothing else
    assert not seen & _piece_texts(eval_texts, min_len=4)
    eval_batches = list(data.eval_iterator())
    assert _segment_texts(eval_batches) == _piece_texts(eval_texts)
    assert sum(int(b["loss_mask"].sum()) for b in eval_batches) == sum(
        len(t) - 1 for t in eval_texts if len(t) > 1
    )


def test_restored_state_gives_the_same_next_batches(make_config):
    data = data_lib.load_data(make_config())
    it = data.train_iterator()
    _take(it, 5)  # past a packing round, so the state is mid-stream
    state = json.loads(json.dumps(it.get_state()))  # JSON-able, as orbax stores it
    expected = _take(it, 6)
    fresh = data.train_iterator()
    fresh.set_state(state)
    _assert_same(_take(fresh, 6), expected)


@pytest.mark.parametrize("packing_kind", ["best_fit", "concat"])
def test_orbax_checkpoint_of_the_iterator_resumes_exactly(make_config, tmp_path, packing_kind):
    data = data_lib.load_data(make_config(data__packing=packing_kind))
    it = data.train_iterator()
    _take(it, 3)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        manager.wait_until_finished()
    expected = _take(it, 4)
    fresh = data.train_iterator()
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        step = manager.latest_step()
        manager.restore(
            step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh))
        )
    assert step == 3
    _assert_same(_take(fresh, 4), expected)


def test_curriculum_shortest_first_constant_tokens_and_resume(make_config):
    config = make_config(data__curriculum=((4, 2), (8, 3)))
    data = data_lib.load_data(config)
    it = data.train_iterator()
    batches = _take(it, 7)
    shapes = [b["inputs"].shape for b in batches]
    assert shapes == [(16, 4)] * 2 + [(8, 8)] * 3 + [(4, 16)] * 2
    for b in batches:
        assert b["positions"].max() < b["inputs"].shape[1]
        assert all(v.shape == b["inputs"].shape for v in b.values())
    for stop in (1, 2, 5):  # mid-stage, and exactly at both stage boundaries
        first = data.train_iterator()
        _take(first, stop)
        resumed = data.train_iterator()
        resumed.set_state(first.get_state())
        _assert_same(_take(resumed, 7 - stop), batches[stop:])


def test_hosts_get_disjoint_training_pieces_that_cover_the_split(make_config, text_docs):
    config = make_config(data__batch_size=4)
    hosts = [data_lib.load_data(config, process_index=i, process_count=2) for i in range(2)]
    seen = []
    for data in hosts:
        batches = _take(data.train_iterator(), 20)
        assert batches[0]["inputs"].shape == (2, 16)  # batch_size // process_count rows
        seen.append({t for t in _segment_texts(batches) if len(t) >= 4})  # unique by content
    eval_names = set(hosts[0].manifest["eval_names"])
    train_texts = [t for n, t in text_docs.items() if n not in eval_names]
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert seen[0] | seen[1] == _piece_texts(train_texts, min_len=4)
    with pytest.raises(ValueError, match=r"config\.data\.batch_size = 4: must be a multiple of"):
        data_lib.load_data(config, process_index=0, process_count=3)


def test_bad_vocab_and_empty_split_are_clear_errors(make_config):
    config = make_config()
    config.model.vocab_size = 100  # bypasses validate on purpose
    with pytest.raises(ValueError, match=r"config.model.vocab_size = 100: must be >= 256"):
        data_lib.load_data(config)
    data = data_lib.load_data(make_config(data__eval_fraction=0.0))
    with pytest.raises(ValueError, match="no held-out documents"):
        data.eval_iterator()


def test_stdlib_default_config_split_by_package(tmp_path):
    from lcm import config as config_lib

    config = config_lib.base_config()
    config.unlock()
    config.data.cache_dir = str(tmp_path)
    data = data_lib.load_data(config)
    m = data.manifest
    assert m["corpus"] == "stdlib" and m["eval_documents"] >= 1
    names = data.corpus.names
    assert names == sorted(names) and "encodings" not in names and "asyncio" in names
    assert set(m["eval_names"]).isdisjoint(names[i] for i in data.train_ids)
    assert len(data.train_ids) + len(data.eval_ids) == len(names) == m["documents"]
    batch = next(data.train_iterator())
    assert batch["inputs"].shape == (config.data.batch_size, config.seq_len)
    again = data_lib.load_data(config)
    assert not again.corpus.created and again.manifest == m  # cached, same manifest


def test_eval_passes_have_equal_length_on_every_host(make_config, text_docs):
    config = make_config(data__batch_size=3, data__eval_fraction=0.5)
    hosts = [data_lib.load_data(config, process_index=i, process_count=3) for i in range(3)]
    passes = [list(data.eval_iterator()) for data in hosts]
    assert len({len(p) for p in passes}) == 1  # lockstep: same number of eval steps
    assert any(not b["loss_mask"].any() for p in passes for b in p)  # some host was topped up
    eval_texts = [text_docs[d.name] for d in hosts[0].eval_documents()]
    assert set().union(*(_segment_texts(p) for p in passes)) == _piece_texts(eval_texts)
    for p in passes:
        assert all(b["inputs"].shape == (1, 16) for b in p)
    assert len(list(hosts[0].eval_iterator())) == len(passes[0])  # a fresh pass per call
