"""Structured packing (SPLiCe; Staniszewski et al., AAAI 2025, arXiv 2312.17296).

Each unit (training sample) is built breadth-first over related documents (``bfs_samples``):

1. The next unused document of a seeded permutation is the root; it is marked used.
2. A queue starts with the root. Pop a document; its ``top_k`` most related *unused*
   documents are marked used and appended to the sample and to the queue, in rank order.
3. The sample ends once it holds at least ``target`` tokens (``seq_len + 1``) or the queue is
   empty; its documents are concatenated in traversal order.

Every document is used exactly once. Unlike the paper, a sample is not truncated to ``seq_len``:
like any unit it is cut into ``seq_len`` pieces (``lcm.data.recipes.units``), its tail a shorter
piece of its own, so no token is dropped. Without document masking, attention spans the sample's
documents within a piece as in the paper; with ``packing = best_fit`` each full piece is one
row (``concat`` lets a piece straddle two rows after a shorter one).

Relations (``config.data.structured_relation``):

- ``path``: documents of the same repository (``corpora.repository``), ranked by the number of
  leading directory components shared (same directory first), then by name.
- ``bm25``: Okapi BM25 (Robertson & Zaragoza 2009; ``k1 = 1.2``, ``b = 0.75``,
  ``idf = ln(1 + (N - df + 0.5) / (df + 0.5))``) over token n-grams (``NGRAM`` consecutive token
  ids, byte n-grams for the byte tokenizer), the query being the set of the document's own
  n-grams; ties by document order. Any document can be related.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence

import numpy as np
from scipy import sparse

from lcm.data.cache import TokenizedCorpus
from lcm.data.corpora import repository
from lcm.data.recipes.units import Unit

RELATIONS = ("path", "bm25")
NGRAM = 4
BM25_K1, BM25_B = 1.2, 0.75

Ranker = Callable[[int, np.ndarray], Sequence[int]]  # (doc, used mask) -> unused, best first


def bfs_samples(
    lengths: Sequence[int], rank: Ranker, *, target: int, top_k: int, seed: int
) -> list[list[int]]:
    """Samples (lists of document indices in traversal order), every document exactly once."""
    lengths = np.asarray(lengths)
    used = np.zeros(len(lengths), dtype=bool)
    samples = []
    for root in np.random.default_rng(seed).permutation(len(lengths)):
        if used[root]:
            continue
        used[root] = True
        sample, queue, total = [int(root)], collections.deque([int(root)]), int(lengths[root])
        while queue and total < target:
            for doc in list(rank(queue.popleft(), used))[:top_k]:
                used[doc] = True
                sample.append(int(doc))
                queue.append(int(doc))
                total += int(lengths[doc])
                if total >= target:
                    break
        samples.append(sample)
    return samples


def path_ranker(names: Sequence[str]) -> Ranker:
    """Same repository only; more shared leading directories first, then by name."""
    dirs = [n.split("/")[:-1] for n in names]
    by_repo: dict[str, list[int]] = collections.defaultdict(list)
    for i in sorted(range(len(names)), key=lambda i: names[i]):
        by_repo[repository(names[i])].append(i)

    def shared(a: list[str], b: list[str]) -> int:
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    def rank(doc: int, used: np.ndarray) -> list[int]:
        candidates = [j for j in by_repo[repository(names[doc])] if not used[j]]
        return sorted(candidates, key=lambda j: -shared(dirs[doc], dirs[j]))  # stable: by name

    return rank


def ngrams(tokens: np.ndarray, n: int = NGRAM) -> np.ndarray:
    """int64 keys of the ``n``-grams of ``tokens`` (``len - n + 1`` of them; exact below 2^15)."""
    t = np.asarray(tokens, dtype=np.int64)
    count = max(len(t) - n + 1, 0)
    key = np.zeros(count, dtype=np.int64)
    for i in range(n):
        key = key * (1 << 15) + t[i : i + count]
    return key


def bm25_scores(documents: Sequence[np.ndarray], n: int = NGRAM) -> np.ndarray:
    """``[D, D]`` float64: BM25 of document ``j`` for the query "n-gram set of document ``i``"."""
    grams = [np.unique(ngrams(doc, n), return_counts=True) for doc in documents]
    vocab = np.unique(np.concatenate([g for g, _ in grams] + [np.zeros(0, np.int64)]))
    rows = np.repeat(np.arange(len(documents)), [len(g) for g, _ in grams])
    cols = np.concatenate([np.searchsorted(vocab, g) for g, _ in grams] + [np.zeros(0, int)])
    tf = np.concatenate([c for _, c in grams] + [np.zeros(0, int)]).astype(np.float64)
    shape = (len(documents), len(vocab))
    dl = np.array([c.sum() for _, c in grams], dtype=np.float64)
    avgdl = max(dl.mean(), 1.0) if len(dl) else 1.0
    df = np.bincount(cols, minlength=len(vocab))
    idf = np.log(1 + (len(documents) - df + 0.5) / (df + 0.5))
    norm = BM25_K1 * (1 - BM25_B + BM25_B * dl[rows] / avgdl)
    weight = sparse.csr_matrix((idf[cols] * tf * (BM25_K1 + 1) / (tf + norm), (rows, cols)), shape)
    query = sparse.csr_matrix((np.ones_like(tf), (rows, cols)), shape)
    return np.asarray((query @ weight.T).todense())


def bm25_ranker(documents: Sequence[np.ndarray]) -> Ranker:
    scores = bm25_scores(documents)

    def rank(doc: int, used: np.ndarray) -> list[int]:
        candidates = np.flatnonzero(~used)
        order = np.lexsort((candidates, -scores[doc, candidates]))
        return candidates[order].tolist()

    return rank


def units(
    corpus: TokenizedCorpus,
    doc_ids: np.ndarray,
    *,
    target: int,
    relation: str,
    top_k: int,
    seed: int,
) -> list[Unit]:
    """SPLiCe samples of the non-empty documents ``doc_ids`` as units.

    Raises:
      ValueError: unknown ``relation``.
    """
    if relation not in RELATIONS:
        raise ValueError(
            f"config.data.structured_relation = {relation!r}: allowed: {', '.join(RELATIONS)}"
        )
    off = corpus.offsets
    ids = [int(i) for i in doc_ids if off[i + 1] > off[i]]
    if relation == "path":
        rank = path_ranker([corpus.names[i] for i in ids])
    else:
        rank = bm25_ranker([corpus.document(i) for i in ids])
    lengths = [int(off[i + 1] - off[i]) for i in ids]
    samples = bfs_samples(lengths, rank, target=target, top_k=top_k, seed=seed)
    return [tuple((int(off[ids[j]]), int(off[ids[j] + 1])) for j in s) for s in samples]
