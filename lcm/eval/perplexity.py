"""Perplexity vs evaluation length on held-out documents, under a named protocol.

Protocols (reference notes §2.1; results are only comparable within one protocol, so the name is
recorded with every number):

- ``truncate`` (YaRN's figures, Peng et al. 2023, arXiv 2309.00071): each document's first
  ``L + 1`` tokens; one window ``tokens[:L]`` predicts ``tokens[1:L+1]``, all ``L`` targets
  scored. PPL@L is the mean over positions ``0..L-1``.
- ``sliding`` (Press et al. 2022, arXiv 2108.12409; PI, Chen et al. 2023, arXiv 2306.15595):
  each document's first ``span + 1`` tokens, ``span = max(lengths)``, so every length scores the
  same ``span`` targets. Windows of ``L`` tokens start at ``0, S, 2S, ...`` (the last one moved
  back to end exactly at ``span``, so every window has ``L`` tokens and one compiled shape);
  each window scores only the targets no earlier window scored (the first window scores all).

Documents: the held-out documents with more than ``max(lengths)`` tokens, first
``num_documents`` by name, the same set at every length. Positions restart at 0 in every window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lcm.model import head

PROTOCOLS = ("truncate", "sliding")


def windows(
    tokens: np.ndarray, *, length: int, protocol: str, stride: int, span: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(inputs, targets, mask)``, each ``int32 [W, length]``, of one document.

    Args:
      tokens: the document, at least ``span + 1`` tokens.
      length: window length ``L``.
      protocol: ``truncate`` or ``sliding``.
      stride: sliding window step ``S`` (``1 <= S <= L``).
      span: sliding: number of targets scored, ``>= length``.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol = {protocol!r}; allowed: {', '.join(PROTOCOLS)}")
    if protocol == "truncate":
        if len(tokens) < length + 1:
            raise ValueError(f"document of {len(tokens)} tokens; truncate needs {length + 1}")
        return tokens[None, :length], tokens[None, 1 : length + 1], np.ones((1, length), np.int32)
    if not 1 <= stride <= length <= span or len(tokens) < span + 1:
        raise ValueError(
            f"sliding needs 1 <= stride ({stride}) <= length ({length}) <= span ({span}) and "
            f"a document of span + 1 tokens (has {len(tokens)})"
        )
    inputs, targets, masks = [], [], []
    scored_to, begin = 0, 0
    while scored_to < span:
        start = min(begin, span - length)
        index = start + np.arange(length)
        inputs.append(tokens[index])
        targets.append(tokens[index + 1])
        masks.append((index >= scored_to).astype(np.int32))
        scored_to = start + length
        begin += stride
    return np.stack(inputs), np.stack(targets), np.stack(masks)


def make_nll_fn(model) -> Callable:
    """Jitted ``(params, inputs, targets, mask) [B, L] -> (nll_sum, tokens)`` in float32.

    The loss of the train and eval steps (``lcm.model.head.model_cross_entropy``): the output
    head runs over ``config.model.loss_chunk`` positions at a time, so a long window never holds
    its full ``[B, L, V]`` logits.
    """

    def nll(params, inputs, targets, mask):
        b, length = inputs.shape
        positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
        segment_ids = jnp.ones_like(inputs)
        nll_sum, _, tokens = head.model_cross_entropy(
            model, params, inputs, positions, segment_ids, targets, mask
        )
        return nll_sum, tokens

    return jax.jit(nll)


def select_documents(documents: Sequence, *, min_tokens: int, count: int) -> list:
    """The first ``count`` documents (by name) with at least ``min_tokens`` tokens."""
    long_enough = [d for d in documents if len(d.tokens) >= min_tokens]
    long_enough.sort(key=lambda d: d.name)
    return long_enough[:count]


def perplexity_vs_length(
    nll_fn: Callable,
    params,
    documents: Sequence,
    *,
    lengths: Sequence[int],
    protocol: str,
    stride: int = 0,
    batch_size: int = 1,
    progress: Callable[[str], None] = lambda s: None,
) -> list[dict]:
    """One record per length: ``length, stride, nll, perplexity, tokens_scored, windows``.

    Args:
      nll_fn: from ``make_nll_fn``.
      params: model parameters.
      documents: ``EvalDocument``s, each with more than ``max(lengths)`` tokens.
      lengths: evaluation lengths in tokens.
      protocol: ``truncate`` or ``sliding``.
      stride: sliding step; 0 = ``length // 8`` (at least 1).
      batch_size: windows per forward pass (the last batch is padded with unscored rows).
      progress: called with a short line after each batch.
    """
    span = max(lengths)
    records = []
    for length in lengths:
        step = (stride or max(length // 8, 1)) if protocol == "sliding" else None
        parts = [
            windows(d.tokens, length=length, protocol=protocol, stride=step or 1, span=span)
            for d in documents
        ]
        inputs, targets, mask = (np.concatenate([p[i] for p in parts]) for i in range(3))
        pad = -len(inputs) % batch_size
        inputs, targets, mask = (np.pad(x, ((0, pad), (0, 0))) for x in (inputs, targets, mask))
        nll, count = 0.0, 0.0
        for start in range(0, len(inputs), batch_size):
            rows = slice(start, start + batch_size)
            out = nll_fn(params, inputs[rows], targets[rows], mask[rows])
            nll, count = nll + float(out[0]), count + float(out[1])
            progress(f"perplexity L={length}: window {start + batch_size}/{len(inputs)}")
        records.append(
            {
                "length": length,
                "stride": step,
                "nll": nll / count,
                "perplexity": float(np.exp(nll / count)),
                "tokens_scored": int(count),
                "windows": len(inputs) - pad,
            }
        )
    return records
