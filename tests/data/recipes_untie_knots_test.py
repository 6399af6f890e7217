"""Untie the Knots: chunking, shuffling, markers, masked loss, chunk-order task."""

import numpy as np
import pytest

from lcm.data import tokenizers
from lcm.data.recipes import untie_knots as utk

SPECIALS = {name: 300 + i for i, name in enumerate(utk.SPECIALS)}
S, E = SPECIALS["chunk_start"], SPECIALS["chunk_end"]


def _plan(lengths, *, length, seed=0, **options):
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int)
    return utk.plan_rows(
        lengths, starts, length=length, options=utk.Options(**options), specials=SPECIALS,
        encode=tokenizers.ByteTokenizer().encode, seed=seed,
    )  # fmt: skip


class _Flat:
    """A stand-in corpus whose token ``i`` is ``i`` (so content tokens name their position)."""

    def read(self, a, b):
        return np.arange(a, b, dtype=np.int32)


def _row(items):
    return utk.row_arrays(_Flat(), items)


def test_one_document_three_chunks_in_order_exact():
    (row,) = _plan([12], length=40, chunk_probs=(0.0, 0.0, 1.0))
    tokens, weights = _row(row)
    # [S c0 E S c1 E S c2 E] with c0 + c1 + c2 = tokens 0..11 in order (keep_order).
    assert tokens[0] == S and tokens[-1] == E and (tokens == S).sum() == 3 == (tokens == E).sum()
    content = tokens[(tokens != S) & (tokens != E)]
    np.testing.assert_array_equal(content, np.arange(12))
    np.testing.assert_array_equal(weights, (tokens < 300).astype(np.int32))  # markers: no loss
    chunks = np.split(tokens, np.flatnonzero(tokens == S)[1:])
    assert [c[0] for c in chunks] == [S] * 3 and all(c[-1] == E and len(c) > 2 for c in chunks)


def test_every_token_once_order_kept_last_chunk_last():
    lengths = [7, 30, 4, 19, 25, 2, 11]
    rows = _plan(lengths, length=24, seed=3, chunk_probs=(0.2, 0.4, 0.4), keep_order=True)
    doc_of = np.repeat(np.arange(len(lengths)), lengths)
    seen = []
    for items in rows:
        tokens, _ = _row(items)
        assert len(tokens) <= 25  # length + 1
        content = tokens[tokens < 300]
        seen.extend(content.tolist())
        for d in np.unique(doc_of[content]):  # a document's tokens keep their order in a row
            mine = content[doc_of[content] == d]
            np.testing.assert_array_equal(mine, np.arange(mine[0], mine[0] + len(mine)))
        spans = [it for it in items if it[0] == "span"]
        last_doc = doc_of[spans[-1][1]]
        frag = [s for s in spans if doc_of[s[1]] == last_doc]
        assert spans[-1][2] == max(s[2] for s in frag)  # its last chunk closes the row
    assert sorted(seen) == list(range(sum(lengths)))  # every token exactly once
    assert seen != list(range(sum(lengths)))  # but shuffled across documents


def test_without_keep_order_chunks_of_a_document_can_swap():
    rows = _plan([40] * 6, length=60, seed=0, chunk_probs=(0.0, 0.0, 1.0), keep_order=False)
    swapped = False
    for items in rows:
        spans = [it[1] for it in items if it[0] == "span"]
        by_doc = {}
        for a in spans:
            by_doc.setdefault(a // 40, []).append(a)
        swapped |= any(v != sorted(v) for v in by_doc.values())
    assert swapped


def test_sort_task_lists_chunk_ids_in_document_order():
    (row,) = _plan([20], length=120, seed=1, chunk_probs=(0.0, 1.0), sort_task=True)
    tokens, weights = _row(row)
    sp = SPECIALS
    opens = np.flatnonzero(tokens == sp["doc_open"])
    ids = [tokens[o + 1 : o + 1 + utk.ID_LENGTH] for o in opens]
    assert len(ids) == 2 and all(tokens[o + 1 + utk.ID_LENGTH] == sp["doc_close"] for o in opens)
    for i in ids:  # 6 characters of the alphabet, not trained where they first appear
        assert bytes(i.astype(np.uint8)).decode().isalnum()
    s = int(np.flatnonzero(tokens == sp["sort_open"])[0])
    listed = tokens[s + 1 : s + 1 + 2 * utk.ID_LENGTH + 1]
    np.testing.assert_array_equal(listed, np.concatenate([ids[0], [sp["sort_sep"]], ids[1]]))
    assert tokens[s + 1 + 2 * utk.ID_LENGTH + 1] == sp["sort_close"]
    assert tokens[-1] == sp["sort_close"]  # the list follows the document's last chunk
    want = np.zeros(len(tokens), np.int32)
    want[tokens < 256] = 1  # content and ids ...
    for o in opens:
        want[o + 1 : o + 1 + utk.ID_LENGTH] = 0  # ... but the random ids where introduced
    np.testing.assert_array_equal(weights, want)


def test_batches_features_and_vocab_error(repo_store):
    kw = dict(
        length=16, rows=2, options=utk.Options(), tokenizer=tokenizers.ByteTokenizer(),
        seed=0, process_index=0, process_count=1,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"config\.model\.vocab_size = 256: must be >= 263"):
        utk.batches(repo_store, np.arange(len(repo_store)), vocab_size=256, **kw)
    it = iter(utk.batches(repo_store, np.arange(len(repo_store)), vocab_size=263, **kw))
    content = []
    for _ in range(10):
        b = next(it)
        assert all(v.shape == (2, 16) and v.dtype == np.int32 for v in b.values())
        real = b["segment_ids"] > 0
        np.testing.assert_array_equal(b["segment_ids"], real.astype(np.int32))  # one segment
        np.testing.assert_array_equal(b["loss_mask"], real & (b["targets"] < 256))
        np.testing.assert_array_equal(
            b["inputs"][:, 1:][real[:, 1:]], b["targets"][:, :-1][real[:, 1:]]
        )
        np.testing.assert_array_equal(b["positions"], np.broadcast_to(np.arange(16), (2, 16)))
        for row, r in zip(b["inputs"], real, strict=True):
            content.extend(row[r][row[r] < 256].tolist())
    assert set(content) == set(b"abcdefgh")
