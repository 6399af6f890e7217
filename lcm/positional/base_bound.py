"""The lower bound of the RoPE base for a context length (Men et al. 2024).

"Base of RoPE Bounds Context Length" (arXiv:2405.14591): for i.i.d. q, k and a similar key
``k* = q + ε``, the expected attention advantage of ``k*`` over a random key at distance ``m`` is
``2σ² · B(m)`` with ``B(m) = Σ_{i<d/2} cos(m θ_i)``, ``θ_i = base^(-2i/d)``. A base supports
context length L when ``B(m) ≥ 0`` for every ``m`` in ``[0, L]``; there is no closed form, so the
bound is found numerically.
"""

from __future__ import annotations

import numpy as np


def rope_score_bound(m, base: float, head_dim: int) -> np.ndarray:
    """``B(m) = Σ_i cos(m θ_i)`` in float64 for an array of distances ``m``."""
    theta = float(base) ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    return np.cos(np.multiply.outer(np.asarray(m, np.float64), theta)).sum(-1)


def _admissible(base: float, context_length: int, head_dim: int) -> bool:
    # Bad bases usually fail at small m, so check growing chunks of m and stop at the first < 0.
    start, size = 0, 64
    while start <= context_length:
        m = np.arange(start, min(context_length + 1, start + size))
        if (rope_score_bound(m, base, head_dim) < 0).any():
            return False
        start, size = start + size, size * 2
    return True


def min_base(
    context_length: int, head_dim: int, *, per_decade: int = 1000, rtol: float = 1e-4
) -> float:
    """Smallest RoPE base with ``B(m) ≥ 0`` for all integer ``m ≤ context_length``.

    The paper's Table 2 (head_dim 128; context → lower bound of the base)::

        1k     2k     4k     8k     16k    32k    64k    128k   256k   512k   1M
        4.3e3  1.6e4  2.7e4  8.4e4  3.1e5  6.4e5  2.1e6  7.8e6  3.6e7  6.4e7  5.1e8

    (Figure 1 fits ``base ≈ 0.0424 · L^1.628``.) The admissible set of bases is not an interval:
    narrow admissible windows sit below some of the paper's values, so the answer depends on the
    search resolution. This scans a geometric grid with ``per_decade`` points per decade upward
    from ``base = context_length / 4`` (a scan from base 1 finds nothing admissible lower, for 1k
    and 8k) and refines the first admissible grid point by bisection against its
    inadmissible neighbour to relative tolerance ``rtol``. With the default grid it reproduces
    the 1k, 8k and 64k entries (4294, 8.38e4, 2.10e6) but finds smaller bases for 2k (1.16e4)
    and 16k (2.34e5); the rounded table values themselves leave ``min B`` slightly negative at
    16k/32k/256k/512k/1M.

    Args:
      context_length: L, the largest distance that must keep ``B ≥ 0``.
      head_dim: rotary dimension d (even).
      per_decade: grid points per decade of the base.
      rtol: relative tolerance of the bisection.

    Returns:
      The lower bound of the base, as a float.
    """
    if context_length < 1 or head_dim < 2 or head_dim % 2:
        raise ValueError(
            f"min_base needs context_length >= 1 and an even head_dim >= 2; got "
            f"context_length={context_length}, head_dim={head_dim}"
        )
    ratio = 10.0 ** (1.0 / per_decade)
    low = max(context_length / 4.0, 1.0)
    while not _admissible(low * ratio, context_length, head_dim):
        low *= ratio
    high = low * ratio
    while high / low > 1.0 + rtol:
        mid = (low * high) ** 0.5
        if _admissible(mid, context_length, head_dim):
            high = mid
        else:
            low = mid
    return float(high)
