"""Sparse attention from the long-context papers, each registered in ``lcm.attention.ATTENTION``.

``moba`` (MoBA), ``hsa`` (hierarchical sparse attention), ``s2_attn`` (LongLoRA shifted sparse
attention) and ``sink_window`` (StreamingLLM sinks + sliding window). Each module holds the fast
path, a dense reference for tests and the ``attend`` adapter.
"""

from lcm.attention.sparse import hsa as hsa
from lcm.attention.sparse import moba as moba
from lcm.attention.sparse import shifted as shifted
from lcm.attention.sparse import streaming as streaming


def config_options(attention, impl: str) -> dict:
    """The ``attend`` options of sparse implementation ``impl`` from ``config.model.attention``.

    Empty for other implementations. ``s2_attn`` and ``sink_window`` run ``blockwise`` and also
    take its tile lengths.
    """
    tiles = dict(block_q=attention.block_q, block_kv=attention.block_kv)
    if impl == "moba":
        return dict(block_size=attention.sparse_block, top_k=attention.sparse_top_k)
    if impl == "hsa":
        return dict(
            chunk_size=attention.sparse_block,
            top_k=attention.sparse_top_k,
            weighting=attention.hsa_weighting,
        )
    if impl == "s2_attn":
        return dict(group_size=attention.sparse_block, **tiles)
    if impl == "sink_window":
        return dict(sink=attention.sink, window=attention.recent, **tiles)
    return {}
