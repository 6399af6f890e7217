"""Sparse attention from the long-context papers, each registered in ``lcm.attention.ATTENTION``.

``moba`` (MoBA), ``hsa`` (hierarchical sparse attention), ``s2_attn`` (LongLoRA shifted sparse
attention) and ``sink_window`` (StreamingLLM sinks + sliding window). Each module holds the fast
path, a dense reference for tests and the ``attend`` adapter.
"""

from lcm.attention.sparse import hsa as hsa
from lcm.attention.sparse import moba as moba
from lcm.attention.sparse import shifted as shifted
from lcm.attention.sparse import streaming as streaming
