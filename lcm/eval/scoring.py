"""Scores of generated answers, as in RULER and the passkey papers (reference notes §1).

- ``string_match_all`` (RULER ``scripts/eval/synthetic/constants.py``): per sample, the fraction
  of references found as case-insensitive substrings of the prediction; averaged over samples,
  times 100, rounded to 2 decimals.
- ``string_match_part``: per sample 1 if any reference is found; averaged, times 100, rounded.
- ``passkey`` (Landmark / YaRN ``eval/passkey.py``): the first ``\\d+`` in the prediction must
  equal the key; percent of samples.

Predictions are post-processed as RULER's ``evaluate.py`` does: runs of newlines collapse to
one and surrounding whitespace is stripped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence


def postprocess(prediction: str) -> str:
    return re.sub(r"\n+", "\n", prediction).strip()


def string_match_all(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    per_sample = [
        sum(r.lower() in postprocess(p).lower() for r in refs) / len(refs)
        for p, refs in zip(predictions, references, strict=True)
    ]
    return round(100 * sum(per_sample) / len(per_sample), 2)


def string_match_part(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    per_sample = [
        max(r.lower() in postprocess(p).lower() for r in refs)
        for p, refs in zip(predictions, references, strict=True)
    ]
    return round(100 * sum(per_sample) / len(per_sample), 2)


def passkey_match(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    def hit(prediction: str, key: str) -> bool:
        found = re.search(r"\d+", prediction)
        return found is not None and found.group() == key

    per_sample = [hit(p, refs[0]) for p, refs in zip(predictions, references, strict=True)]
    return round(100 * sum(per_sample) / len(per_sample), 2)


METRICS = {
    "string_match_all": string_match_all,
    "string_match_part": string_match_part,
    "passkey": passkey_match,
}


def score(metric: str, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """``METRICS[metric](predictions, references)``; a 0-100 score, 2 decimals."""
    if metric not in METRICS:
        raise ValueError(f"metric = {metric!r}; allowed: {', '.join(METRICS)}")
    if not predictions or len(predictions) != len(references):
        raise ValueError(
            f"need one reference list per prediction and at least one; got "
            f"{len(predictions)} predictions and {len(references)} reference lists"
        )
    return METRICS[metric](predictions, references)
