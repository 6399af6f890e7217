"""Sparse attention from the long-context papers, each registered in ``lcm.attention.ATTENTION``.

``moba``, ``hsa``, ``s2_attn`` and ``sink_window`` are ``attend`` implementations; ``nsa`` has
parameters, so it is a linen module (``nsa.NSA``, ``MODULE_IMPLS``). ``config.model.attention.
sparse_kernel`` picks ``blockwise`` (plain JAX) or ``pallas`` for their blocks. See
docs/attention.md#sparse-attention.
"""

from lcm.attention.sparse import hsa as hsa
from lcm.attention.sparse import kernel_slots as kernel_slots
from lcm.attention.sparse import moba as moba
from lcm.attention.sparse import nsa as nsa
from lcm.attention.sparse import shifted as shifted
from lcm.attention.sparse import streaming as streaming

MODULE_IMPLS = ("nsa",)  # config attention impls that are linen modules, not ``attend`` impls


def config_options(attention, impl: str) -> dict:
    """The ``attend`` options of sparse implementation ``impl`` from ``config.model.attention``.

    Empty for other implementations. ``s2_attn`` and ``sink_window`` run tiled attention and also
    take its tile lengths; all but ``nsa``'s compression branch run on ``sparse_kernel``.
    """
    tiles = dict(block_q=attention.block_q, block_kv=attention.block_kv)
    kernel = attention.sparse_kernel
    if impl == "moba":
        return dict(block_size=attention.sparse_block, top_k=attention.sparse_top_k, kernel=kernel)
    if impl == "hsa":
        return dict(
            chunk_size=attention.sparse_block,
            top_k=attention.sparse_top_k,
            weighting=attention.hsa_weighting,
            kernel=kernel,
        )
    if impl == "s2_attn":
        return dict(group_size=attention.sparse_block, kernel=kernel, **tiles)
    if impl == "sink_window":
        return dict(sink=attention.sink, window=attention.recent, kernel=kernel, **tiles)
    if impl == "nsa":
        return dict(
            cmp_block=attention.nsa_cmp_block,
            cmp_stride=attention.nsa_cmp_stride,
            slc_block=attention.nsa_slc_block,
            slc_top_n=attention.nsa_top_n,
            init_blocks=attention.nsa_init_blocks,
            local_blocks=attention.nsa_local_blocks,
            window=attention.nsa_window,
            kernel=kernel,
        )
    return {}
