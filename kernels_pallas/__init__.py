"""Pallas attention kernels. Imports only jax and numpy, never lcm.

Layout ``q [B,N,T,H]``, ``k, v [B,K,S,H]`` (GQA: query head n reads kv head ``n // (N // K)``).
Every kernel takes ``interpret`` (None: Mosaic when lowered for TPU, jax's Pallas interpreter
elsewhere). ``flash``: causal / bidirectional on positions; ``block_sparse``: kv block lists;
``engine``: their shared kernels; ``mask``: positional masks and tile kinds; ``common``:
validation. See docs/attention.md#kernels.
"""
