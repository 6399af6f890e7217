"""Unit recipes: documents, concat-by-repository (+ length mix) and the unit packer."""

import collections
import itertools

import numpy as np
import pytest

from lcm.data import corpora
from lcm.data.recipes import units

from .conftest import REPO_FILES


def _text(store, unit):
    return "".join(chr(t) for a, b in unit for t in store.read(a, b))


def test_repository_of_a_name():
    assert corpora.repository("asyncio/events.py") == "asyncio"
    assert corpora.repository("os.py") == "os"
    assert corpora.repository("asyncio") == "asyncio"


def test_repositories_concatenate_files_in_path_order(repo_store):
    plan = units.repositories(repo_store, np.arange(len(repo_store)))
    f = REPO_FILES
    assert [_text(repo_store, u) for u in plan] == [
        f["a/sub/y.py"] + f["a/sub/z.py"] + f["a/w.py"] + f["a/x.py"],  # sorted paths of a/
        f["b/q.py"] + f["b/r.py"],
        f["c.py"],
        f["d.py"],
    ]
    assert [units.unit_length(u) for u in plan] == [51, 33, 40, 8]


def test_length_buckets_exact_and_empty_bucket_is_an_error(repo_store):
    plan = units.repositories(repo_store, np.arange(len(repo_store)))
    buckets, weights = units.by_length(plan, ((0, 0.5), (34, 0.25), (50, 0.25)))
    assert [[units.unit_length(u) for u in b] for b in buckets] == [[33, 8], [40], [51]]
    assert weights == [0.5, 0.25, 0.25]
    with pytest.raises(ValueError, match=r"config\.data\.length_mix = .*100 <= tokens < "):
        units.by_length(plan, ((0, 0.5), (100, 0.5)))


def _rows(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def test_concat_without_first_token_mask_is_one_stream_cut_and_shuffled(repo_store):
    """concat-and-chunk: units back to back in one stream, cut into rows, rows reshuffled."""
    plan = units.documents(repo_store, np.arange(len(repo_store)))
    ds = units.packed_rows(
        repo_store, plan, length=8, packing="concat", packing_bins=2, mask_first_token=False,
        seed=3, process_index=0, process_count=1,
    )  # fmt: skip
    # The stream has 132 tokens: 16 rows of 8 inputs (+ the next token as the last target);
    # the last 3 inputs, short of a row, are dropped.
    rows = []
    for r in _rows(ds, 32):
        np.testing.assert_array_equal(r["inputs_segment_ids"], 1)  # one piece fills each row
        np.testing.assert_array_equal(r["targets"][:-1], r["inputs"][1:])
        rows.append("".join(chr(t) for t in [*r["inputs"], r["targets"][-1]]))
    epochs = rows[:16], rows[16:]
    assert sorted(epochs[0]) == sorted(epochs[1]) and epochs[0] != epochs[1]  # reshuffled
    # Oracle: some order of the files, back to back, cut into 9-token windows sharing a token.
    texts = list(REPO_FILES.values())
    cuts = [
        sorted(stream[8 * i : 8 * i + 9] for i in range(16))
        for stream in ("".join(o) for o in itertools.permutations(texts))
    ]
    assert sorted(epochs[0]) in cuts
    # Shuffled: consecutive rows do not continue each other in the stream order.
    assert sum(a[-1] != b[0] for a, b in itertools.pairwise(rows)) > 5


def test_concat_gives_every_unit_token_pair_once_per_epoch_in_shuffled_pieces(repo_store):
    plan = units.repositories(repo_store, np.arange(len(repo_store)))
    ds = units.packed_rows(
        repo_store, plan, length=8, packing="concat", packing_bins=2, mask_first_token=True,
        seed=1, process_index=0, process_count=1,
    )  # fmt: skip
    rows = _rows(ds, 32)  # 128 = (51 + 33 + 40 + 8) - 4 inputs per epoch: 16 rows, 2 epochs
    inputs = np.concatenate([r["inputs"] for r in rows]).tolist()
    targets = np.concatenate([r["targets"] for r in rows]).tolist()
    want = collections.Counter()  # oracle: each unit's consecutive token pairs, nothing across
    for u in plan:
        t = np.concatenate([repo_store.read(a, b) for a, b in u]).tolist()
        want.update(itertools.pairwise(t))
    epochs = [slice(0, 128), slice(128, 256)]
    for e in epochs:
        assert collections.Counter(zip(inputs[e], targets[e], strict=True)) == want
    assert inputs[epochs[0]] != inputs[epochs[1]]  # reshuffled
    # Shuffled pieces: the repository changes between more than the 3 unit boundaries.
    repo = {ord(c): r for r, letters in enumerate(("abcd", "ef", "g", "h")) for c in letters}
    firsts = [repo[t] for t in inputs[0:128:8]]  # each row's first token's repository
    assert sum(a != b for a, b in itertools.pairwise(firsts)) > 3


def test_fit_packing_gives_unit_pieces_each_once_per_epoch(repo_store):
    plan = units.repositories(repo_store, np.arange(len(repo_store)))
    ds = units.packed_rows(
        repo_store, plan, length=16, packing="first_fit", packing_bins=2, mask_first_token=True,
        seed=0, process_index=0, process_count=1,
    )  # fmt: skip
    pieces = collections.Counter()
    for r in _rows(ds, 60):
        for s in np.unique(r["inputs_segment_ids"][r["inputs_segment_ids"] > 0]):
            where = r["inputs_segment_ids"] == s
            pieces[
                (
                    bytes(r["inputs"][where].astype(np.uint8)),
                    bytes(r["targets"][where].astype(np.uint8)),
                )
            ] += 1
    want = collections.Counter()
    for u in plan:  # oracle: windows of 16 inputs over each unit, targets the next tokens
        t = bytes(np.concatenate([repo_store.read(a, b) for a, b in u]).astype(np.uint8))
        for s in range(0, len(t) - 1, 16):
            want[(t[s : min(s + 16, len(t) - 1)], t[s + 1 : s + 17])] += 1
    assert set(pieces) == set(want)  # nothing else appears; repository text crosses files
    assert any(b"d" in i and b"c" in i for i, _ in pieces)  # a/sub/z.py then a/w.py in one piece


def test_mix_draws_rows_from_buckets_by_weight(repo_store):
    plan = units.repositories(repo_store, np.arange(len(repo_store)))
    buckets, weights = units.by_length(plan, ((0, 0.25), (40, 0.75)))  # [33, 8] vs [51, 40]
    streams = [
        units.packed_rows(
            repo_store,
            b,
            length=8,
            packing="best_fit",
            packing_bins=2,
            mask_first_token=True,
            seed=i,
            process_index=0,
            process_count=1,
        )
        for i, b in enumerate(buckets)
    ]
    data_config = type("D", (), {"document_masking": True})()
    ds = units.finish(streams, weights, rows=4, length=8, d=data_config)
    long_letters = set(b"abcdg")  # repositories a (51 tokens) and c.py (40)
    from_long = []
    for batch in _rows(ds, 10):
        for row, seg in zip(batch["inputs"], batch["segment_ids"], strict=True):
            from_long.append(set(row[seg > 0].tolist()) <= long_letters)
    assert sum(from_long) == 30 and len(from_long) == 40  # exactly 3 of every 4 rows


def test_errors_are_clear(repo_store):
    plan = units.documents(repo_store, np.arange(len(repo_store)))
    kw = dict(length=8, packing_bins=2, seed=0, process_index=0, process_count=1)
    with pytest.raises(ValueError, match=r"mask_first_token = False: needs .*'concat'"):
        units.packed_rows(repo_store, plan, packing="first_fit", mask_first_token=False, **kw)
    with pytest.raises(ValueError, match=r"config\.data\.packing = 'x': allowed"):
        units.packed_rows(repo_store, plan, packing="x", mask_first_token=True, **kw)
    kw["process_count"] = 99
    with pytest.raises(ValueError, match="19 pieces of length 8 from 8 units cannot be"):
        units.packed_rows(repo_store, plan, packing="concat", mask_first_token=True, **kw)
