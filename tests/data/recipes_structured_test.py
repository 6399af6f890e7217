"""Structured packing (SPLiCe): breadth-first samples, path and BM25 relations."""

import collections
import math

import numpy as np
import pytest

from lcm.data.recipes import structured

from .conftest import REPO_FILES


def test_bfs_follows_the_ranking_and_stops_at_the_target():
    # A fixed relation graph, best first; documents of 3 tokens, target 10 -> at most 4 each.
    graph = {0: [3, 1, 2], 1: [4, 0], 2: [0], 3: [5, 0], 4: [1], 5: [3]}

    def rank(doc, used):
        return [j for j in graph[doc] if not used[j]]

    assert np.random.default_rng(7).permutation(6).tolist() == [5, 2, 0, 4, 1, 3]  # root order
    samples = structured.bfs_samples([3] * 6, rank, target=10, top_k=2, seed=7)
    # Root 5 -> 3; pop 3 -> 0 (5 used); pop 0 -> 1 (12 >= 10 tokens: stop before 2).
    # Root 2 -> its only neighbour 0 is used: alone. Root 4 -> 1 is used: alone.
    assert samples == [[5, 3, 0, 1], [2], [4]]


def test_bfs_top_1_is_a_chain():
    # Ranked by index distance (ties: lower index); seed 0 roots: 2, 0, 1, 3.
    def rank(doc, used):
        return sorted((j for j in range(4) if not used[j]), key=lambda j: (abs(j - doc), j))

    assert np.random.default_rng(0).permutation(4).tolist() == [2, 0, 1, 3]
    samples = structured.bfs_samples([5, 5, 5, 5], rank, target=11, top_k=1, seed=0)
    assert samples == [[2, 1, 0], [3]]  # 2 -> 1 -> 0 reaches 15 >= 11 tokens; 3 is left


def test_path_ranker_same_repository_same_directory_first():
    names = sorted(REPO_FILES)  # a/sub/y.py a/sub/z.py a/w.py a/x.py b/q.py b/r.py c.py d.py
    rank = structured.path_ranker(names)
    used = np.zeros(len(names), dtype=bool)
    idx = {n: i for i, n in enumerate(names)}
    got = [names[j] for j in rank(idx["a/sub/y.py"], used)]
    assert got == ["a/sub/y.py", "a/sub/z.py", "a/w.py", "a/x.py"]  # self is filtered by `used`
    used[idx["a/sub/y.py"]] = used[idx["a/sub/z.py"]] = True
    assert [names[j] for j in rank(idx["a/sub/y.py"], used)] == ["a/w.py", "a/x.py"]
    assert [names[j] for j in rank(idx["c.py"], used)] == ["c.py"]  # its own repository only


def _naive_bm25(docs, n=4, k1=1.2, b=0.75):
    grams = [collections.Counter(tuple(d[i : i + n]) for i in range(len(d) - n + 1)) for d in docs]
    dl = [sum(g.values()) for g in grams]
    avgdl = sum(dl) / len(dl)
    df = collections.Counter(t for g in grams for t in g)
    out = np.zeros((len(docs), len(docs)))
    for i, q in enumerate(grams):
        for j, g in enumerate(grams):
            for t in q:
                if t in g:
                    idf = math.log(1 + (len(docs) - df[t] + 0.5) / (df[t] + 0.5))
                    tf = g[t]
                    out[i, j] += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl[j] / avgdl))
    return out


def test_bm25_matches_the_closed_form():
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 4, n) for n in (12, 30, 7, 3, 25)]
    docs.append(docs[1][5:20].copy())  # shares many n-grams with doc 1
    got = structured.bm25_scores(docs)
    np.testing.assert_allclose(got, _naive_bm25([d.tolist() for d in docs]), rtol=1e-12)
    assert got[5].argsort()[-2] == 1 or got[5].argmax() == 1  # the overlapping document ranks high
    assert (got[3] == 0).all()  # 3 tokens: no 4-gram


def test_ngram_keys_are_exact_below_2_pow_15():
    keys = structured.ngrams(np.array([1, 2, 3, 4, 5]), n=4)
    assert keys.tolist() == [
        ((1 * 2**15 + 2) * 2**15 + 3) * 2**15 + 4,
        ((2 * 2**15 + 3) * 2**15 + 4) * 2**15 + 5,
    ]


@pytest.mark.parametrize("relation", ["path", "bm25"])
def test_units_use_every_document_once(repo_store, relation):
    ids = np.arange(len(repo_store))
    plan = structured.units(repo_store, ids, target=25, relation=relation, top_k=2, seed=1)
    spans = sorted(s for u in plan for s in u)
    off = repo_store.offsets
    assert spans == [(int(off[i]), int(off[i + 1])) for i in ids]
    for u in plan[:-1]:
        assert sum(b - a for a, b in u) >= 25 or relation == "path"  # path: a repo can run out
    if relation == "path":  # a sample never mixes repositories
        for u in plan:
            letters = {chr(repo_store.read(a, a + 1)[0]) for a, _ in u}
            assert (
                len(
                    {
                        next(n for n, t in REPO_FILES.items() if t[0] == c)
                        .split("/")[0]
                        .removesuffix(".py")
                        for c in letters
                    }
                )
                == 1
            )
    with pytest.raises(ValueError, match=r"config\.data\.structured_relation = 'x': allowed"):
        structured.units(repo_store, ids, target=25, relation="x", top_k=2, seed=1)
