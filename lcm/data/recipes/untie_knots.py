"""Untie the Knots (UtK; Tian et al. 2024, arXiv 2409.04774; ``gpt_dataset_utk.py``).

Rows are planned once from the seed (``plan_rows``), then shuffled per epoch:

1. **Fill.** Documents in a seeded order are laid into rows of at most ``length + 1`` tokens,
   each document cut into *fragments* at row ends (the rest opens the next row), so every
   document token lands in exactly one row.
2. **Chunk.** Each fragment is split into ``n`` chunks at random distinct cut points, ``n``
   drawn from ``chunk_probs`` (probability of 1, 2, 3, ... chunks; fewer when the fragment or
   the row's room is too small).
3. **Shuffle.** The row's chunks are shuffled across fragments; with ``keep_order`` each
   fragment's chunks keep their relative order (a random interleaving). The last chunk of the
   row's last fragment stays at the end.
4. **Mark.** Each chunk is wrapped as ``CHUNK_START chunk CHUNK_END``. With ``sort_task`` a
   chunk starts ``CHUNK_START DOC_OPEN id DOC_CLOSE`` (``id`` a random ``ID_LENGTH``-character
   string from ``ID_ALPHABET``, tokenized), and right after a fragment's last chunk *in row
   order* comes ``SORT_OPEN id_1 SORT_SEP id_2 ... SORT_CLOSE``, its chunk ids in document
   order (the chunk-order recovery task).

Special tokens take the ids just above the tokenizer's vocabulary (``SPECIALS`` in order), so
``config.model.vocab_size`` must leave room for them. Loss: a target that is a special token
or a ``DOC_OPEN`` id token is masked; document tokens and the ids of the sort list are
trained. A row is one segment, positions ``0 .. len - 2``, padded to ``length``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import grain
import numpy as np

from lcm.data import packing as packing_lib
from lcm.data.cache import TokenizedCorpus

SPECIALS = (
    "chunk_start",
    "chunk_end",
    "doc_open",
    "doc_close",
    "sort_open",
    "sort_sep",
    "sort_close",
)
ID_LENGTH = 6
ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


@dataclasses.dataclass(frozen=True)
class Options:
    chunk_probs: tuple[float, ...] = (0.2, 0.4, 0.4)  # P(1 chunk), P(2 chunks), ...
    keep_order: bool = True  # chunks of one document keep their order
    sort_task: bool = False  # chunk ids and the chunk-order list


def _validate_probs(probs: Sequence[float]) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if not len(p) or (p < 0).any() or not np.isclose(p.sum(), 1.0):
        raise ValueError(
            f"config.data.utk_chunk_probs = {tuple(probs)}: must be non-negative and sum to 1"
        )
    return p


# A row item: ("span", start, stop) of corpus tokens (trained) or ("lit", tokens, weight).
Item = tuple


def plan_rows(
    lengths: Sequence[int],
    starts: Sequence[int],
    *,
    length: int,
    options: Options,
    specials: dict[str, int],
    encode,
    seed: int,
) -> list[list[Item]]:
    """Rows as item lists; documents ``i`` span ``[starts[i], starts[i] + lengths[i])``.

    ``encode(text) -> token ids`` tokenizes chunk ids; ``specials`` maps ``SPECIALS`` to ids.
    """
    probs = _validate_probs(options.chunk_probs)
    rng = np.random.default_rng(seed)
    budget = length + 1
    queue = [(int(starts[i]), int(lengths[i])) for i in rng.permutation(len(lengths))]
    queue = [q for q in queue if q[1] > 0]
    rows, pos = [], 0
    while pos < len(queue):
        fragments, room = [], budget
        while pos < len(queue):
            start, left = queue[pos]
            n = int(rng.choice(len(probs), p=probs)) + 1
            ids = [encode(_random_id(rng)) for _ in range(n)] if options.sort_task else []
            while n >= 1:
                cost = _overhead(n, ids[:n], options.sort_task)
                take = min(left, room - cost)
                if take >= n:
                    break
                n -= 1
            if n == 0:
                break
            cuts = np.sort(rng.choice(np.arange(1, take), size=n - 1, replace=False))
            bounds = [0, *cuts.tolist(), take]
            fragments.append(
                ([(start + bounds[c], start + bounds[c + 1]) for c in range(n)], ids[:n])
            )
            room -= take + _overhead(n, ids[:n], options.sort_task)
            queue[pos] = (start + take, left - take)
            if left == take:
                pos += 1
        if not fragments:
            need = _overhead(
                1, [encode(_random_id(rng))] if options.sort_task else [], options.sort_task
            )
            raise ValueError(
                f"config.seq_len = {length}: too short for data.recipe = 'untie_knots' (a chunk "
                f"needs {need} marker tokens and one of text)"
            )
        rows.append(_arrange(fragments, options, specials, rng))
    return rows


def _random_id(rng: np.random.Generator) -> str:
    return "".join(ID_ALPHABET[i] for i in rng.integers(0, len(ID_ALPHABET), ID_LENGTH))


def _overhead(n: int, ids: list[np.ndarray], sort_task: bool) -> int:
    """Marker (and id) tokens around ``n`` chunks of one fragment; ``ids``: their chunk ids."""
    if not sort_task:
        return 2 * n
    id_tokens = sum(len(i) for i in ids)
    return 2 * n + (2 * n + id_tokens) + (2 + id_tokens + n - 1)


def _arrange(fragments, options: Options, specials, rng) -> list[Item]:
    """The chunks of ``fragments`` shuffled and marked (steps 3 and 4 of the module doc)."""
    order = [(f, c) for f, (chunks, _) in enumerate(fragments) for c in range(len(chunks))]
    last = order.pop()  # the last chunk of the last fragment stays at the end
    if options.keep_order:
        labels = rng.permutation([f for f, _ in order])
        seen: dict[int, int] = {}
        order = []
        for f in labels.tolist():
            order.append((f, seen.get(f, 0)))
            seen[f] = seen.get(f, 0) + 1
    else:
        order = [order[i] for i in rng.permutation(len(order))]
    order.append(last)
    final = {f: i for i, (f, _) in enumerate(order)}  # each fragment's last chunk in row order

    def lit(*names_or_ids, weight=0):
        toks = [specials[x] if isinstance(x, str) else x for x in names_or_ids]
        return ("lit", np.asarray(np.hstack(toks), dtype=np.int32), weight)

    items = []
    for i, (f, c) in enumerate(order):
        chunks, ids = fragments[f]
        items.append(lit("chunk_start"))
        if options.sort_task:
            items.append(lit("doc_open", ids[c], "doc_close"))
        items.append(("span", *chunks[c]))
        items.append(lit("chunk_end"))
        if options.sort_task and final[f] == i:
            items.append(lit("sort_open"))
            for k, chunk_id in enumerate(ids):
                if k:
                    items.append(lit("sort_sep"))
                items.append(("lit", np.asarray(chunk_id, np.int32), 1))
            items.append(lit("sort_close"))
    return items


def row_arrays(corpus: TokenizedCorpus, items: list[Item]) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens, weights)`` of a planned row; weight 1 = trained when it is a target."""
    tokens, weights = [], []
    for item in items:
        if item[0] == "span":
            t = corpus.read(item[1], item[2])
            w = np.ones(len(t), np.int32)
        else:
            t, w = item[1], np.full(len(item[1]), item[2], np.int32)
        tokens.append(t)
        weights.append(w)
    return np.concatenate(tokens).astype(np.int32), np.concatenate(weights)


class _ReadRows:
    """grain map: a list of planned row ids -> the five features ``[rows, length]``."""

    def __init__(self, corpus, plan, *, length: int):
        self._corpus, self._plan, self._length = corpus, plan, length

    def __call__(self, row_ids) -> dict[str, np.ndarray]:
        n, length = len(row_ids), self._length
        out = {k: np.zeros((n, length), np.int32) for k in packing_lib.FEATURES}
        out["positions"][:] = np.arange(length, dtype=np.int32)
        for r, row in enumerate(row_ids):
            tokens, weights = row_arrays(self._corpus, self._plan[int(row)])
            m = len(tokens) - 1
            out["inputs"][r, :m] = tokens[:-1]
            out["targets"][r, :m] = tokens[1:]
            out["segment_ids"][r, :m] = 1
            out["loss_mask"][r, :m] = weights[1:]
        return out


def batches(
    corpus: TokenizedCorpus,
    doc_ids: np.ndarray,
    *,
    length: int,
    rows: int,
    options: Options,
    tokenizer,
    vocab_size: int,
    seed: int,
    process_index: int,
    process_count: int,
) -> grain.IterDataset:
    """Endless batches of ``rows`` UtK rows, this host's share.

    Raises:
      ValueError: ``vocab_size`` leaves no room for the special tokens, bad ``chunk_probs``,
        or fewer rows than one batch per host.
    """
    base = tokenizer.vocab_size
    if vocab_size < base + len(SPECIALS):
        raise ValueError(
            f"config.model.vocab_size = {vocab_size}: must be >= {base + len(SPECIALS)} for "
            f"config.data.recipe = 'untie_knots' (the tokenizer's {base} ids and "
            f"{len(SPECIALS)} markers)"
        )
    specials = {name: base + i for i, name in enumerate(SPECIALS)}
    off = corpus.offsets
    plan = plan_rows(
        off[doc_ids + 1] - off[doc_ids],
        off[doc_ids],
        length=length,
        options=options,
        specials=specials,
        encode=tokenizer.encode,
        seed=seed,
    )
    if len(plan) < rows * process_count:
        raise ValueError(f"{len(plan)} UtK rows of length {length}: fewer than one batch per host")
    ds = grain.MapDataset.range(len(plan))[process_index::process_count]
    ds = ds.shuffle(seed=seed).repeat().batch(rows, batch_fn=list)
    return ds.map(_ReadRows(corpus, plan, length=length)).to_iter_dataset(packing_lib.READ_OPTIONS)
