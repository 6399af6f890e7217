"""Units: token-span lists that recipes build from documents, packed into rows with grain.

A unit is a tuple of flat-array spans ``((start, stop), ...)`` of the tokenized corpus, read and
concatenated in order (a document, a repository's files in path order, a SPLiCe sample).
``packed_rows`` cuts units into pieces like ``lcm.data.packing`` cuts documents (``length + 1``
tokens, one shared), shuffles the pieces of all units together (``MapDataset.shuffle(seed)
.repeat()``, this host's ``pieces[host::hosts]``; a fresh order every epoch) and packs them, so
the rows of a batch come from many units, never from one unit's consecutive stretch. ``finish``
mixes bucket streams row by row, batches and finalizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import grain
import numpy as np

from lcm.data import packing as packing_lib
from lcm.data.cache import TokenizedCorpus
from lcm.data.corpora import repository

Unit = tuple[tuple[int, int], ...]


def documents(corpus: TokenizedCorpus, doc_ids: np.ndarray) -> list[Unit]:
    """One unit per non-empty document, in ``doc_ids`` order."""
    off = corpus.offsets
    return [((int(off[i]), int(off[i + 1])),) for i in doc_ids if off[i + 1] > off[i]]


def repositories(corpus: TokenizedCorpus, doc_ids: np.ndarray) -> list[Unit]:
    """One unit per repository: its non-empty documents in name (path) order; sorted by name."""
    groups: dict[str, list[int]] = {}
    for i in doc_ids:
        groups.setdefault(repository(corpus.names[i]), []).append(int(i))
    off = corpus.offsets
    out = []
    for repo in sorted(groups):
        ids = sorted(groups[repo], key=lambda i: corpus.names[i])
        spans = tuple((int(off[i]), int(off[i + 1])) for i in ids if off[i + 1] > off[i])
        if spans:
            out.append(spans)
    return out


def unit_length(unit: Unit) -> int:
    return sum(b - a for a, b in unit)


def by_length(
    plan: list[Unit], length_mix: tuple[tuple[int, float], ...]
) -> tuple[list[list[Unit]], list[float]]:
    """Units split into the buckets of ``length_mix`` (``(min_tokens, weight)``, increasing).

    Bucket ``b`` holds the units with ``min_tokens_b <= tokens < min_tokens_{b+1}``.

    Raises:
      ValueError: a bucket holds no unit.
    """
    bounds = [int(m) for m, _ in length_mix] + [np.iinfo(np.int64).max]
    buckets: list[list[Unit]] = [[] for _ in length_mix]
    for unit in plan:
        n = unit_length(unit)
        for b in range(len(length_mix)):
            if bounds[b] <= n < bounds[b + 1]:
                buckets[b].append(unit)
    for b, bucket in enumerate(buckets):
        if not bucket:
            raise ValueError(
                f"config.data.length_mix = {tuple(length_mix)}: no repository of the training "
                f"split has {bounds[b]} <= tokens < {bounds[b + 1]}; change the bounds"
            )
    return buckets, [float(w) for _, w in length_mix]


class _ReadPiece:
    """grain map: piece index -> ``{"inputs", "targets"}`` read through the unit stream.

    The stream is the plan's units back to back (``stream_spans``); piece ``i`` is its tokens
    ``[starts[i], stops[i])``, read from the corpus spans it covers.
    """

    def __init__(self, corpus, spans: np.ndarray, starts: np.ndarray, stops: np.ndarray):
        self._corpus, self._starts, self._stops = corpus, starts, stops
        self._flat = spans[:, 0]  # corpus offset of each span
        self._at = np.concatenate([[0], np.cumsum(spans[:, 1] - spans[:, 0])])  # stream offsets

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        a, b = int(self._starts[index]), int(self._stops[index])
        first = int(np.searchsorted(self._at, a, side="right")) - 1
        parts = []
        for s in range(first, int(np.searchsorted(self._at, b, side="left"))):
            lo, hi = max(a, self._at[s]), min(b, self._at[s + 1])
            shift = self._flat[s] - self._at[s]
            parts.append(self._corpus.read(lo + shift, hi + shift))
        piece = np.concatenate(parts)
        return {"inputs": piece[:-1], "targets": piece[1:]}


def packed_rows(
    corpus: TokenizedCorpus,
    plan: list[Unit],
    *,
    length: int,
    packing: str,
    packing_bins: int,
    mask_first_token: bool,
    seed: int,
    process_index: int,
    process_count: int,
) -> grain.IterDataset:
    """Endless packed rows (grain packer output, not batched) of this host's share of ``plan``.

    Pieces of at most ``length + 1`` tokens (``packing.split_pieces``) are cut from each unit
    (``mask_first_token = True``) or from all units back to back in a seeded order (``False``:
    one stream, each unit's last token followed by the next unit's first; its last piece, under
    ``length`` inputs, is dropped, so each row is one contiguous stretch of the stream: plain
    concat-and-chunk), shuffled across units with the seed and reshuffled every epoch, then
    packed. Every piece is used once per epoch, and the rows of a batch come from many units.

    Raises:
      ValueError: fewer pieces than hosts, or ``mask_first_token = False`` without concat.
    """
    if packing not in packing_lib.PACKINGS:
        raise ValueError(
            f"config.data.packing = {packing!r}: allowed: {', '.join(packing_lib.PACKINGS)}"
        )
    if not mask_first_token and packing != "concat":
        raise ValueError(
            f"config.data.mask_first_token = False: needs config.data.packing = 'concat' "
            f"(got {packing!r}), so the next unit follows in the row"
        )
    order = np.arange(len(plan))
    if not mask_first_token:
        order = np.random.default_rng([seed, 1]).permutation(len(plan))
    spans = np.array([span for u in order for span in plan[u]], dtype=np.int64).reshape(-1, 2)
    ends = np.cumsum([0] + [unit_length(plan[u]) for u in order])
    if not mask_first_token:
        ends = ends[[0, -1]]  # one stream
    starts, stops = packing_lib.split_pieces(ends, np.arange(len(ends) - 1), length)
    if not mask_first_token:  # drop the stream's short last piece: every row one full piece
        starts, stops = starts[stops - starts == length + 1], stops[stops - starts == length + 1]
    if len(starts) < process_count:
        raise ValueError(
            f"{len(starts)} pieces of length {length} from {len(plan)} units cannot be shared "
            f"by {process_count} hosts"
        )
    ds = grain.MapDataset.range(len(starts))[process_index::process_count]
    ds = ds.shuffle(seed=seed).repeat().map(_ReadPiece(corpus, spans, starts, stops))
    ds = ds.to_iter_dataset(packing_lib.READ_OPTIONS)
    lengths = {"inputs": length, "targets": length}
    if packing == "concat":
        return packing_lib.ConcatThenSplit(ds, length_struct=lengths)
    packer = {
        "first_fit": grain.experimental.FirstFitPackIterDataset,
        "best_fit": grain.experimental.BestFitPackIterDataset,
    }[packing]
    return packer(ds, length_struct=lengths, num_packing_bins=packing_bins, seed=seed)


def finish(
    streams: Sequence[grain.IterDataset], weights: Sequence[float], *, rows: int, length: int, d
) -> grain.IterDataset:
    """Rows of ``streams`` mixed by ``weights`` (one stream: as is), batched and finalized."""
    ds = streams[0] if len(streams) == 1 else grain.IterDataset.mix(list(streams), list(weights))
    ds = ds.batch(rows, drop_remainder=True)
    return ds.map(
        packing_lib.Finalize(rows=rows, length=length, document_masking=d.document_masking)
    )
