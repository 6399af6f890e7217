"""Sparse attention from the long-context papers, each registered in ``lcm.attention.ATTENTION``.

``moba``, ``hsa``, ``s2_attn`` and ``sink_window`` are ``attend`` implementations; ``nsa`` has
parameters (``Capabilities.has_params``), so the model calls it inside its attention module.
``config.model.attention.sparse_kernel`` picks ``blockwise`` (plain JAX) or ``pallas`` for their
blocks. See docs/attention.md#sparse-attention.
"""

from lcm.attention.sparse import hsa as hsa
from lcm.attention.sparse import kernel_slots as kernel_slots
from lcm.attention.sparse import moba as moba
from lcm.attention.sparse import nsa as nsa
from lcm.attention.sparse import shifted as shifted
from lcm.attention.sparse import streaming as streaming
