"""Running the synthetic tasks: cached decoding, answer log-likelihood, a score per grid cell.

Answers are generated with ``lcm.inference.generate`` (KV cache, chunked prefill; greedy unless
``config.inference`` says otherwise, and under its eviction policy and budget when one is set),
stopping at a newline (no answer contains one), after the task's ``max_new_tokens``, or when
prompt plus answer reach the sample length ``L``. The answer's teacher-forced log-likelihood
(``Sample.target``, e.g. ``" 12345"`` for a pass key) is reported as mean NLL per token beside
the exact-match score; it runs one sequence of exactly ``L`` tokens (prompt, answer, zeros)
through ``perplexity.make_nll_fn`` (the chunked loss: no ``[L, V]`` table) with only the answer's
targets scored:
attention is causal, so trailing tokens cannot change the scored logits, and every forward at
that length reuses one compiled shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lcm import inference
from lcm.data import synthetic
from lcm.eval import scoring

NEWLINE = "\n"


def make_logprob_fn(model) -> Callable:
    """Jitted ``(params, tokens [1, L]) -> float32 [L, V]`` next-token log-probabilities.

    The full table, for short sequences; scoring an answer uses ``perplexity.make_nll_fn``.
    """

    def logprobs(params, tokens):
        length = tokens.shape[1]
        positions = jnp.arange(length, dtype=jnp.int32)[None]
        logits = model.apply({"params": params}, tokens, positions, jnp.ones_like(tokens))
        return jax.nn.log_softmax(logits[0].astype(jnp.float32), axis=-1)

    return jax.jit(logprobs)


def make_decode_fn(params, config) -> Callable:
    """``decode(prompt, *, length, max_new_tokens, stop_id) -> list[int]`` via ``generate``.

    At most ``length - len(prompt)`` tokens; the stop token ends the answer and is dropped.
    """

    def decode(prompt: np.ndarray, *, length: int, max_new_tokens: int, stop_id=None):
        budget = min(max_new_tokens, length - len(prompt))
        if budget < 1:
            return []
        out = inference.generate(
            params, config, prompt, max_new_tokens=budget, stop_id=stop_id
        ).tolist()
        return out[: out.index(stop_id)] if stop_id in out else out

    return decode


def target_nll(nll_fn, params, prompt: np.ndarray, target: np.ndarray, *, length: int):
    """Mean NLL per token of ``target`` following ``prompt`` (teacher forcing).

    ``nll_fn``: ``(params, inputs, targets, mask) [1, L] -> (nll_sum, tokens)``
    (``perplexity.make_nll_fn``).
    """
    tokens = np.zeros((1, length), np.int32)
    tokens[0, : len(prompt)] = prompt
    tokens[0, len(prompt) : len(prompt) + len(target)] = target
    rows = len(prompt) - 1 + np.arange(len(target))  # the positions that predict the answer
    targets, mask = np.zeros_like(tokens), np.zeros_like(tokens)
    targets[0, rows], mask[0, rows] = target, 1
    nll_sum, count = nll_fn(params, tokens, targets, mask)
    return float(nll_sum) / float(count)


def run_task(
    task: str,
    nll_fn,
    decode_fn,
    params,
    tokenizer,
    *,
    lengths: Sequence[int],
    depths: Sequence[float],
    samples_per_cell: int,
    seed: int,
    code_lines: Sequence[str] = (),
    progress: Callable[[str], None] = lambda s: None,
) -> dict:
    """Scores ``task`` on the (length, depth) grid; returns its results record.

    ``nll_fn`` (``perplexity.make_nll_fn``) scores the target; ``decode_fn`` (``make_decode_fn``)
    generates the answer.

    Cells where not even the smallest haystack fits the length are recorded with
    ``"skipped"`` and no score.
    """
    spec = synthetic.TASKS[task]
    cell_depths = list(depths) if spec.uses_depth else [None]
    stop = tokenizer.encode(NEWLINE)
    stop_id = int(stop[0]) if len(stop) == 1 else None
    count = lambda s: len(tokenizer.encode(s))  # noqa: E731
    cells, done, total = [], 0, len(lengths) * len(cell_depths) * samples_per_cell
    for length in lengths:
        for depth in cell_depths:
            predictions, references, nlls, sizes = [], [], [], []
            for index in range(samples_per_cell):
                sample = synthetic.make_sample(
                    task,
                    length=length,
                    depth=depth,
                    index=index,
                    seed=seed,
                    count=count,
                    code_lines=code_lines,
                )
                done += 1
                if sample is None:
                    continue
                prompt = np.asarray(tokenizer.encode(sample.prompt), np.int32)
                out = decode_fn(
                    prompt,
                    length=length,
                    max_new_tokens=spec.max_new_tokens,
                    stop_id=stop_id,
                )
                target = np.asarray(tokenizer.encode(sample.target), np.int32)
                predictions.append(tokenizer.decode(np.asarray(out, np.int32)))
                references.append(sample.references)
                nlls.append(target_nll(nll_fn, params, prompt, target, length=length))
                sizes.append(sample.size)
                progress(f"{task}: sample {done}/{total} (L={length}, depth={depth})")
            cell = {"length": length, "depth": depth, "samples": len(predictions)}
            if predictions:
                cell.update(
                    score=scoring.score(spec.metric, predictions, references),
                    target_nll=float(np.mean(nlls)),
                    haystack_size=sizes,
                    example={"prediction": predictions[0], "references": list(references[0])},
                )
            else:
                cell.update(skipped=f"prompt does not fit in {length} tokens", score=None)
            cells.append(cell)
    return {
        "metric": spec.metric,
        "max_new_tokens": spec.max_new_tokens,
        "settings": spec.settings,
        "depths": cell_depths,
        "lengths": list(lengths),
        "samples_per_cell": samples_per_cell,
        "cells": cells,
    }
