"""Packing: every emitted segment must be a piece of one document, with its own next tokens."""

import collections

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lcm.data import cache, corpora, packing, tokenizers

LENGTH = 8


def _naive_pieces(doc, length):
    """Oracle: (inputs, targets) windows of at most `length`, targets = next tokens in `doc`."""
    out = []
    for start in range(0, max(len(doc) - 1, 0), length):
        piece = doc[start : start + length + 1]
        out.append((tuple(piece[:-1]), tuple(piece[1:])))
    return out


@given(st.lists(st.integers(0, 30), max_size=8), st.integers(1, 6))
def test_split_pieces_matches_naive_windows(lengths, length):
    offsets = np.cumsum([0, *lengths])
    flat = np.arange(offsets[-1])
    starts, stops = packing.split_pieces(offsets, np.arange(len(lengths)), length)
    got = [
        (tuple(flat[a : b - 1]), tuple(flat[a + 1 : b])) for a, b in zip(starts, stops, strict=True)
    ]
    want = [
        p
        for i in range(len(lengths))
        for p in _naive_pieces(flat[offsets[i] : offsets[i + 1]], length)
    ]
    assert got == want


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    lengths = [1, 2, 3, 9, 4, 20, 5, 6, 17, 7, 3, 8, 2, 11]
    texts = ["".join(chr(c) for c in rng.integers(97, 123, n)) for n in lengths]
    docs = [corpora.Document(f"d{i:02d}", t) for i, t in enumerate(texts)]
    sha = corpora._digest([(d.name, d.text.encode()) for d in docs])
    return cache.tokenize_corpus(
        corpora.Corpus(docs, {"corpus": "unit", "sha256": sha}),
        tokenizers.ByteTokenizer(),
        tmp_path,
    )


def _all_pieces(store, ids):
    return collections.Counter(
        p for i in ids for p in _naive_pieces(store.document(i).tolist(), LENGTH)
    )


def _batches(store, ids, **kw):
    args = dict(length=LENGTH, rows=3, packing="first_fit", document_masking=True, packing_bins=4)
    args.update(seed=0, train=False)
    args.update(kw)
    return list(packing.batches(store, ids, **args))


def _segments(batch):
    """(inputs, targets) of every segment, checking the row layout on the way."""
    found = []
    for row in range(len(batch["inputs"])):
        seg, pos = batch["segment_ids"][row], batch["positions"][row]
        np.testing.assert_array_equal(batch["loss_mask"][row], seg != 0)
        real = int(np.count_nonzero(seg))
        assert not seg[real:].any()  # padding only at the end of the row
        np.testing.assert_array_equal(batch["inputs"][row][real:], 0)
        ids = seg[:real]
        if real:
            assert ids[0] == 1 and set(np.diff(ids)) <= {0, 1}  # 1, 2, 3, ... contiguous
        for s in np.unique(ids):
            where = np.flatnonzero(seg == s)
            np.testing.assert_array_equal(pos[where], np.arange(len(where)))  # restart at 0
            found.append((tuple(batch["inputs"][row][where]), tuple(batch["targets"][row][where])))
    return found


@pytest.mark.parametrize("kind", ["first_fit", "best_fit"])
def test_packed_segments_are_whole_pieces_with_in_document_targets(store, kind):
    ids = np.arange(len(store))
    batches = _batches(store, ids, packing=kind)
    for b in batches:
        assert set(b) == set(packing.FEATURES)
        assert all(v.shape == (3, LENGTH) and v.dtype == np.int32 for v in b.values())
    segments = collections.Counter(s for b in batches for s in _segments(b))
    # Every piece exactly once, so each target is the next token of the same document: the
    # last token of a document is never followed (in `targets`) by the next document's first.
    assert segments == _all_pieces(store, ids)
    assert any(b["segment_ids"].max() > 1 for b in batches)  # rows really hold several documents


def test_concat_chunks_in_order(store):
    ids = np.arange(len(store))
    batches = _batches(store, ids, packing="concat")
    rows = [tuple(b[k][r] for k in packing.FEATURES) for b in batches for r in range(3)]
    inputs, targets = [], []
    for inp, tgt, seg, pos, mask in rows:
        real = seg != 0
        np.testing.assert_array_equal(mask, real)
        for s in np.unique(seg[real]):
            np.testing.assert_array_equal(pos[seg == s], np.arange(np.sum(seg == s)))
        inputs.extend(inp[real]), targets.extend(tgt[real])
    pieces = [p for i in ids for p in _naive_pieces(store.document(i).tolist(), LENGTH)]
    assert inputs == [t for p in pieces for t in p[0]]  # concatenated in order, cut every LENGTH
    assert targets == [t for p in pieces for t in p[1]]
    assert sum(int(b["loss_mask"].sum()) for b in batches) == len(inputs)
    assert all(b["segment_ids"][:, -1].all() for b in batches[:-1])  # no padding before the end


@pytest.mark.parametrize("kind", ["first_fit", "concat"])
def test_without_document_masking_one_segment_per_row(store, kind):
    for b in _batches(store, np.arange(len(store)), packing=kind, document_masking=False):
        np.testing.assert_array_equal(b["segment_ids"], b["loss_mask"])
        np.testing.assert_array_equal(
            b["positions"], np.broadcast_to(np.arange(LENGTH), (3, LENGTH))
        )


def test_train_stream_is_endless_shuffled_and_seeded(store):
    ids = np.arange(len(store))

    def take(seed, n=12):
        it = iter(
            packing.batches(
                store,
                ids,
                length=LENGTH,
                rows=2,
                packing="first_fit",
                document_masking=True,
                packing_bins=4,
                seed=seed,
                train=True,
            )
        )
        return [next(it) for _ in range(n)]  # more batches than one epoch holds

    a, b, c = take(0), take(0), take(1)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
    assert any(not np.array_equal(x["inputs"], z["inputs"]) for x, z in zip(a, c, strict=True))
    assert all(x["inputs"].shape == (2, LENGTH) for x in a)


def test_host_shards_are_disjoint_and_cover(store):
    ids = np.arange(len(store))
    per_host = [
        collections.Counter(
            s for b in _batches(store, ids, process_index=i, process_count=3) for s in _segments(b)
        )
        for i in range(3)
    ]
    total = collections.Counter()
    for host in per_host:
        assert host  # every host gets pieces
        total += host
    assert total == _all_pieces(store, ids)  # union covers all, and counts add up: disjoint
    with pytest.raises(ValueError, match="cannot be shared by 1000 hosts"):
        _batches(store, ids, process_count=1000)
    with pytest.raises(ValueError, match=r"config\.data\.packing = 'zip': allowed"):
        _batches(store, ids, packing="zip")
