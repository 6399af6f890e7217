"""Dataset Decomposition (Pouransari et al., NeurIPS 2024; apple/ml-dataset-decomposition).

**Decompose** (``decompose``, the paper's ``get_binary``): walk each document from its start;
with ``r`` tokens left, ``k = floor(log2(r - 1))``; if ``k > max_log`` draw ``k`` from
``[min_log, max_log]`` with probability proportional to ``2 ** (max_log - k)`` (about equal tokens
per bucket); cut a sequence of ``2 ** k + 1`` tokens (inputs and shifted targets) into bucket
``k`` and move on by ``2 ** k`` (consecutive sequences share one token, so every target of the
document is predicted once, like ``lcm.data.packing`` pieces); stop when ``r - 1 < 2 ** min_log``
(that tail is dropped). Each sequence comes from one document: no packing, no mask.

**Schedule** (``epoch_steps``): every step draws one bucket; a step of bucket ``k`` has
``step_tokens / 2 ** k`` sequences, so tokens per step are constant. Per epoch each bucket's
sequences are shuffled and cut into full steps (a remainder is left out of that epoch), and the
steps of all buckets are shuffled together (seeded per epoch), so buckets appear in proportion to
their tokens. Curriculum: ``config.data.curriculum`` stages cap the longest bucket (a stage of
length ``l`` decomposes with ``max_log = log2(l)``), so shortest-first is a stage list such as
``((64, n), (128, n))`` before ``seq_len``; the paper cycles its curriculum, here it runs once.
"""

from __future__ import annotations

import functools

import grain
import numpy as np

from lcm.data import packing as packing_lib
from lcm.data.cache import TokenizedCorpus


def decompose(
    lengths: np.ndarray, *, min_log: int, max_log: int, rng: np.random.Generator
) -> list[tuple[int, int, int]]:
    """``[(document, start within it, k)]``: sequences of ``2 ** k + 1`` tokens, in doc order."""
    ks = np.arange(min_log, max_log + 1)
    p = 2.0 ** (max_log - ks)
    p /= p.sum()
    out = []
    for doc, n in enumerate(np.asarray(lengths).tolist()):
        pos = 0
        while n - pos - 1 >= 2**min_log:
            k = int(np.floor(np.log2(n - pos - 1)))
            if k > max_log:
                k = int(rng.choice(ks, p=p))
            out.append((doc, pos, k))
            pos += 2**k
    return out


def epoch_steps(
    buckets: np.ndarray, *, step_tokens: int, rng: np.random.Generator
) -> list[tuple[int, np.ndarray]]:
    """One epoch: ``[(k, sequence indices)]``, full steps of every bucket, shuffled together."""
    steps = []
    for k in np.unique(buckets).tolist():
        members = rng.permutation(np.flatnonzero(buckets == k))
        per_step = step_tokens // 2**k
        for s in range(len(members) // per_step):
            steps.append((k, members[s * per_step : (s + 1) * per_step]))
    return [steps[i] for i in rng.permutation(len(steps))]


class _Step:
    """grain map_with_index: global step ``i`` -> this host's batch ``[rows_k, 2 ** k]``."""

    def __init__(self, corpus, starts, buckets, *, steps_per_epoch, step_tokens, seed, host, hosts):
        self._corpus, self._starts, self._buckets = corpus, starts, buckets
        self._per_epoch, self._step_tokens, self._seed = steps_per_epoch, step_tokens, seed
        self._host, self._hosts = host, hosts

    @functools.lru_cache(maxsize=2)  # noqa: B019 (a few small plans per iterator)
    def _epoch(self, epoch: int):
        rng = np.random.default_rng([self._seed, epoch])
        return epoch_steps(self._buckets, step_tokens=self._step_tokens, rng=rng)

    def __call__(self, index: int, _) -> dict[str, np.ndarray]:
        k, members = self._epoch(index // self._per_epoch)[index % self._per_epoch]
        members = members[self._host :: self._hosts]
        length = 2**k
        inputs = np.stack([self._corpus.read(s, s + length + 1) for s in self._starts[members]])
        ones = np.ones((len(members), length), np.int32)
        return {
            "inputs": inputs[:, :-1],
            "targets": inputs[:, 1:],
            "segment_ids": ones,
            "positions": np.broadcast_to(np.arange(length, dtype=np.int32), ones.shape).copy(),
            "loss_mask": ones.copy(),
        }


def batches(
    corpus: TokenizedCorpus,
    doc_ids: np.ndarray,
    *,
    min_length: int,
    max_length: int,
    step_tokens: int,
    seed: int,
    process_index: int,
    process_count: int,
) -> grain.IterDataset:
    """Endless decomposition steps over documents ``doc_ids``, this host's rows of each.

    Args:
      min_length, max_length: shortest and longest bucket lengths (powers of two).
      step_tokens: tokens per global step (``batch_size * seq_len``).

    Raises:
      ValueError: lengths not powers of two, or too few tokens for one step.
    """
    min_log, max_log = int(np.log2(min_length)), int(np.log2(max_length))
    if 2**min_log != min_length or 2**max_log != max_length or min_log > max_log:
        raise ValueError(
            f"config.data.decomposition_min = {min_length}: must be a power of two <= the "
            f"longest bucket {max_length} (a power of two)"
        )
    off = corpus.offsets
    rng = np.random.default_rng([seed, 2**31 - 1])
    pieces = decompose(off[doc_ids + 1] - off[doc_ids], min_log=min_log, max_log=max_log, rng=rng)
    if not pieces:
        raise ValueError(f"no document has more than {min_length} tokens to decompose")
    starts = np.array([off[doc_ids[d]] + p for d, p, _ in pieces], dtype=np.int64)
    buckets = np.array([k for _, _, k in pieces])
    per_epoch = len(epoch_steps(buckets, step_tokens=step_tokens, rng=np.random.default_rng(0)))
    if not per_epoch:
        raise ValueError(
            f"{len(pieces)} decomposed sequences fill no step of {step_tokens} tokens "
            "(config.data.batch_size * seq_len); use a larger corpus or smaller batch"
        )
    step = _Step(
        corpus,
        starts,
        buckets,
        steps_per_epoch=per_epoch,
        step_tokens=step_tokens,
        seed=seed,
        host=process_index,
        hosts=process_count,
    )
    ds = grain.MapDataset.range(per_epoch).repeat().map_with_index(step)
    return ds.to_iter_dataset(packing_lib.READ_OPTIONS)
