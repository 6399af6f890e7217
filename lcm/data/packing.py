"""grain pipelines from a tokenized corpus to packed ``[rows, length]`` batches.

Steps (``batches``):

1. **Pieces.** Each document of ``n`` tokens is cut into pieces of at most ``length + 1`` tokens,
   consecutive pieces sharing one token: ``tokens[0 : L+1], tokens[L : 2L+1], ...``. A piece
   ``p`` becomes ``inputs = p[:-1]``, ``targets = p[1:]``, so every input position has its true
   next token *within the same document* as target: a document's last token is never followed
   by the next document's first, and a document's first token is never a target (nothing
   precedes it). A long document is trained on exactly once per epoch. Documents with fewer
   than 2 tokens give no piece. Positions never exceed ``length - 1``.
2. **Per-host shard** of the piece index space: host ``i`` of ``n`` takes pieces ``i, i+n, ...``
   (disjoint, and together covering every piece).
3. **Order.** Training shuffles the host's pieces with the seed and reshuffles every epoch,
   endlessly (``MapDataset.shuffle(seed).repeat()``); evaluation reads them once, in order, and
   pads its last batch with empty rows (all features 0, ``positions`` as below).
4. **Packing** (``packing``) with grain's packers on ``inputs`` and ``targets`` together:
   ``first_fit`` / ``best_fit`` (``grain.experimental.FirstFitPackIterDataset`` /
   ``BestFitPackIterDataset``: whole pieces into ``packing_bins`` rows at a time, padding the
   rest) or ``concat`` (``ConcatThenSplitIterDataset``: pieces back to back, cut every
   ``length`` tokens; a piece cut at a row end continues at position 0 of the next row).
5. **Batch** ``rows`` rows, then the output features (all int32 ``[rows, length]``):

   - ``inputs``, ``targets``: token ids (0 at padding);
   - ``segment_ids``: with ``document_masking`` (default), ``1, 2, ...`` for the pieces of a
     row in order and 0 for padding, so attention with the mask
     ``causal & (seg_q == seg_k) & (seg_q != 0)`` never crosses a document boundary (reference
     notes §3.7); without it, 1 for every real token of the row and 0 for padding (one segment
     per row: documents attend to each other, as in plain concat-and-chunk);
   - ``positions``: with document masking, the position within the piece (restarting at 0 at
     every document or piece start); without it, ``0 .. length-1`` along the row;
   - ``loss_mask``: 1 where ``targets`` is a real next token (``segment_ids != 0``), else 0;
     with ``answer_tokens`` (answer-only loss) 1 only where the target is part of an answer.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

from lcm.data.cache import TokenizedCorpus

PACKINGS = ("first_fit", "best_fit", "concat")
# Element reads run in a small thread pool ahead of the packer (order is preserved).
READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=64)
FEATURES = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


class _ConcatThenSplitIterator(grain.DatasetIterator):
    """grain's concat-then-split iterator, restorable from a JSON round trip of its state.

    grain 0.2.18 marks "no remainder" with the tuple ``(-1, -1)`` and compares it with ``!=``; a
    state that went through JSON (orbax's grain handler) holds lists, so a state saved with no
    remainder would restore as if it had one and replay the wrong rows. Slices go back to tuples.
    """

    def __init__(self, parent: grain.DatasetIterator):
        super().__init__(parent)

    def __next__(self):
        return next(self._parent)

    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        slices = {k: tuple(v) for k, v in state["remainder_slices"].items()}
        self._parent.set_state({**state, "remainder_slices": slices})


class ConcatThenSplit(grain.IterDataset):
    """``grain.experimental.ConcatThenSplitIterDataset`` with a JSON-safe ``set_state``."""

    def __init__(self, parent: grain.IterDataset, *, length_struct: dict[str, int]):
        super().__init__(
            grain.experimental.ConcatThenSplitIterDataset(parent, length_struct=length_struct)
        )

    def __iter__(self) -> grain.DatasetIterator:
        return _ConcatThenSplitIterator(self._parent.__iter__())


def split_pieces(
    offsets: np.ndarray, doc_ids: np.ndarray, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flat-array ``(starts, stops)`` of the pieces of documents ``doc_ids``, in that order.

    Every piece spans ``2 .. length + 1`` tokens; consecutive pieces of a document overlap by
    one token, so the pieces' ``inputs`` (all tokens but the last) tile the document's tokens
    ``[0, n - 1)``.
    """
    doc_ids = np.asarray(doc_ids, dtype=np.int64)
    begin, end = offsets[doc_ids], offsets[doc_ids + 1]
    counts = np.maximum(end - begin - 1 + length - 1, 0) // length  # ceil((n - 1) / length)
    first = np.repeat(begin, counts)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    starts = first + within * length
    stops = np.minimum(starts + length + 1, np.repeat(end, counts))
    return starts, stops


class _ReadPiece:
    """grain map: piece index -> ``{"inputs", "targets"}`` read from the token cache, plus
    ``loss_weights`` (1 from the token ``answer_from[index]`` of the corpus on) when given."""

    def __init__(self, corpus: TokenizedCorpus, starts, stops, answer_from=None):
        self._corpus, self._starts, self._stops = corpus, starts, stops
        self._answer_from = answer_from

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        start, stop = self._starts[index], self._stops[index]
        piece = self._corpus.read(start, stop)
        out = {"inputs": piece[:-1], "targets": piece[1:]}
        if self._answer_from is not None:  # targets[j] is corpus token start + 1 + j
            targets_at = np.arange(start + 1, stop)
            out["loss_weights"] = (targets_at >= self._answer_from[index]).astype(np.int32)
        return out


class Finalize:
    """grain map: packer output -> the five int32 features, padded to ``rows`` rows."""

    def __init__(self, *, rows: int, length: int, document_masking: bool):
        self._rows, self._length, self._document_masking = rows, length, document_masking

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = self._rows - len(batch["inputs"])  # only the last evaluation batch is short
        out = {
            k: np.pad(np.asarray(batch[f], dtype=np.int32), ((0, missing), (0, 0)))
            for k, f in [
                ("inputs", "inputs"),
                ("targets", "targets"),
                ("segment_ids", "inputs_segment_ids"),
                ("positions", "inputs_positions"),
            ]
        }
        real = (out["segment_ids"] != 0).astype(np.int32)
        out["loss_mask"] = real
        if "loss_weights" in batch:
            weights = np.pad(np.asarray(batch["loss_weights"]), ((0, missing), (0, 0)))
            out["loss_mask"] = real * (weights != 0).astype(np.int32)
        if not self._document_masking:
            out["segment_ids"] = real.copy()
            out["positions"] = np.broadcast_to(
                np.arange(self._length, dtype=np.int32), (self._rows, self._length)
            ).copy()
        return out


def empty_batch(rows: int, length: int, document_masking: bool) -> dict[str, np.ndarray]:
    """A batch of ``rows`` padding rows (``loss_mask`` all 0), laid out like real batches."""
    raw = ("inputs", "targets", "inputs_segment_ids", "inputs_positions")
    finalize = Finalize(rows=rows, length=length, document_masking=document_masking)
    return finalize({k: np.zeros((0, length), np.int32) for k in raw})


def batches(
    corpus: TokenizedCorpus,
    doc_ids: np.ndarray,
    *,
    length: int,
    rows: int,
    packing: str,
    document_masking: bool,
    packing_bins: int,
    seed: int,
    train: bool,
    process_index: int = 0,
    process_count: int = 1,
    answer_tokens: np.ndarray | None = None,
) -> grain.IterDataset:
    """Packed batches of documents ``doc_ids`` of ``corpus``, this host's share.

    Args:
      corpus: the tokenized corpus.
      doc_ids: the documents to use (e.g. the training split).
      length: row length in tokens.
      rows: rows per batch on this host.
      packing: one of ``PACKINGS``.
      document_masking: segment ids per document piece (True) or per row (False).
      packing_bins: rows the first/best-fit packer fills at once.
      seed: shuffle seed (pieces and packed rows).
      train: endless, shuffled and full batches (True), or one ordered pass whose last batch
        is padded with empty rows (False).
      process_index: this host's index, in ``[0, process_count)``.
      process_count: number of hosts sharing the pieces.
      answer_tokens: per corpus document, how many trailing tokens are its answer; when given,
        ``loss_mask`` is 1 only on targets within a document's answer (answer-only loss).

    Raises:
      ValueError: unknown ``packing``, or fewer pieces than hosts.
    """
    if packing not in PACKINGS:
        raise ValueError(f"config.data.packing = {packing!r}: allowed: {', '.join(PACKINGS)}")
    starts, stops = split_pieces(corpus.offsets, doc_ids, length)
    if len(starts) < process_count:
        raise ValueError(
            f"{len(starts)} pieces of length {length} from {len(doc_ids)} documents cannot be "
            f"shared by {process_count} hosts"
        )
    ds = grain.MapDataset.range(len(starts))[process_index::process_count]
    if train:
        ds = ds.shuffle(seed=seed).repeat()
    answer_from = None
    lengths: dict[str, Any] = {"inputs": length, "targets": length}
    if answer_tokens is not None:
        doc_of_piece = np.searchsorted(corpus.offsets, starts, side="right") - 1
        answer_from = corpus.offsets[doc_of_piece + 1] - answer_tokens[doc_of_piece]
        lengths["loss_weights"] = length
    ds = ds.map(_ReadPiece(corpus, starts, stops, answer_from)).to_iter_dataset(READ_OPTIONS)
    if packing == "concat":
        ds = ConcatThenSplit(ds, length_struct=lengths)
    else:
        packer = {
            "first_fit": grain.experimental.FirstFitPackIterDataset,
            "best_fit": grain.experimental.BestFitPackIterDataset,
        }[packing]
        ds = packer(
            ds, length_struct=lengths, num_packing_bins=packing_bins, seed=seed, shuffle_bins=train
        )
    ds = ds.batch(rows, drop_remainder=train)
    return ds.map(Finalize(rows=rows, length=length, document_masking=document_masking))
