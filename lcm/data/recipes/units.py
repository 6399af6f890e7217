"""Units: token-span lists that recipes build from documents, packed into rows with grain.

A unit is a tuple of flat-array spans ``((start, stop), ...)`` of the tokenized corpus, read and
concatenated in order (a document, a repository's files in path order, a SPLiCe sample). The
stream (``packed_rows``): unit ids shuffled per epoch (``MapDataset.shuffle(seed).repeat()``,
this host's ``ids[host::hosts]``), each unit read whole, cut into pieces for the first/best-fit
packers (as ``lcm.data.packing.split_pieces`` does for documents: ``length + 1`` tokens, one
shared) or passed whole to ``packing.ConcatThenSplit`` (``packing = concat``, so a unit stays
contiguous across rows). ``finish`` mixes bucket streams row by row, batches and finalizes.
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


class _NextUnit:
    """grain map_with_index: ``(index, unit id) -> (unit id, id of the unit after it)``."""

    def __init__(self, order: grain.MapDataset):
        self._order = order

    def __call__(self, index: int, unit_id: int) -> tuple[int, int]:
        return unit_id, self._order[index + 1]


class _UnitPieces:
    """grain map: ``(unit id, next unit id) -> [{"inputs", "targets"}, ...]``.

    With ``bridge`` the next unit's first token is appended as the last target. With ``split``
    the unit is cut into pieces of at most ``length + 1`` tokens sharing one token; else it
    stays whole.
    """

    def __init__(self, corpus, plan: list[Unit], *, length: int, split: bool, bridge: bool):
        self._corpus, self._plan = corpus, plan
        self._length, self._split, self._bridge = length, split, bridge

    def __call__(self, pair: tuple[int, int]) -> list[dict[str, np.ndarray]]:
        unit, after = pair
        parts = [self._corpus.read(a, b) for a, b in self._plan[unit]]
        if self._bridge:
            first = self._plan[after][0][0]
            parts.append(self._corpus.read(first, first + 1))
        tokens = np.concatenate(parts)
        n = len(tokens)
        step = self._length if self._split else max(n - 1, 1)
        return [
            {"inputs": tokens[s : min(s + step, n - 1)], "targets": tokens[s + 1 : s + step + 1]}
            for s in range(0, n - 1, step)
        ]


class _Flatten(grain.experimental.FlatMapTransform):
    def __init__(self, max_fan_out: int):
        self.max_fan_out = max_fan_out

    def flat_map(self, element):
        return element


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

    Raises:
      ValueError: fewer units than hosts, or ``mask_first_token = False`` without concat.
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
    if len(plan) < process_count:
        raise ValueError(f"{len(plan)} units cannot be shared by {process_count} hosts")
    order = grain.MapDataset.range(len(plan))[process_index::process_count]
    order = order.shuffle(seed=seed).repeat()
    split = packing != "concat"
    longest = max(unit_length(u) for u in plan) + 1
    ds = order.map_with_index(_NextUnit(order)).map(
        _UnitPieces(corpus, plan, length=length, split=split, bridge=not mask_first_token)
    )
    fan_out = -(-longest // length) if split else 1
    ds = grain.experimental.FlatMapIterDataset(
        ds.to_iter_dataset(packing_lib.READ_OPTIONS), _Flatten(fan_out)
    )
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
