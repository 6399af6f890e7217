"""Sparse attention from the long-context papers, each registered in ``lcm.attention.ATTENTION``.

``moba`` (MoBA), ``hsa`` (hierarchical sparse attention), ``s2_attn`` (LongLoRA shifted sparse
attention) and ``sink_window`` (StreamingLLM sinks + sliding window). Each module holds the fast
path, a dense reference for tests and the ``attend`` adapter. ``nsa`` (native sparse attention)
has learned parameters, so it is not an ``attend`` implementation but a linen module
(``nsa.NSA``) that the model uses in place of ``attend`` when the config names it
(``MODULE_IMPLS``).

``config.model.attention.sparse_kernel`` picks how ``moba``, ``hsa``, ``nsa`` (selection and
window branches), ``s2_attn`` and ``sink_window`` compute their blocks: ``blockwise`` (plain JAX)
or ``pallas`` (the ``kernels_pallas`` block-sparse kernel, via ``kernel_slots`` and the ``pallas``
adapter).
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
