"""Pallas attention kernels. Imports only jax and numpy, never lcm.

With the default ``interpret=None`` every kernel is staged for both targets
(``lax.platform_dependent``): a program lowered for TPU gets compiled Mosaic calls, whatever host
compiles it; one lowered for any other platform (CPU tests, eager calls) runs jax's generic
Pallas interpreter. ``interpret=False`` / ``True`` / ``pltpu.InterpretParams(...)`` force Mosaic,
the generic interpreter or Pallas TPU interpret mode (DMA / semaphore simulation, race checks).
Every kernel passes XLA a cost estimate (``engine.cost_estimate``).

Layout inside the kernels is ``q [B,N,T,H]``, ``k, v [B,K,S,H]`` with ``N % K == 0`` (GQA: query
head n reads kv head ``n // (N // K)``); adapters outside own the transposes.

- ``flash.flash_attention``: causal or bidirectional flash attention on explicit positions, with
  segment ids and an optional log-sum-exp output; ``flash.mha_reference`` is its oracle.
- ``block_sparse.block_sparse_attention``: attention over per-(batch, kv head, q block) lists of kv
  blocks (``block_sparse.BlockLists``), partial tiles masked by a ``mask.PositionalMask``;
  ``block_sparse.block_sparse_reference`` is its oracle, and ``block_lists_from_mask`` /
  ``block_lists_from_ids`` build the lists.
- ``engine``: the forward, dq and dkv kernels both share; ``mask``: the positional mask
  description and tile classification; ``common``: interpret-mode and input validation.
"""
