"""Attention for lcm: one front door (``attend``), declarative masks, registered implementations.

    from lcm import attention
    out = attention.attend(q, k, v, mask=attention.Causal(), impl="blockwise",
                           q_pos=positions, k_pos=positions)

    impl = attention.ATTENTION.build(config.model.attention)  # configured, frozen
    out = attention.attend(q, k, v, mask=..., impl=impl, q_pos=..., k_pos=...)

Implementations (``ATTENTION.names()``): ``reference`` (dense float32 oracle), ``xla``
(``jax.nn.dot_product_attention``), ``blockwise`` (flash-style online softmax, skips empty
tiles), ``pallas``, the context-parallel ``ring``, ``all_gather``, ``ulysses`` and ``usp``
(``lcm.attention.context``), and the sparse methods of ``lcm.attention.sparse`` (``moba``,
``hsa``, ``s2_attn``, ``sink_window``, and ``nsa``, which has parameters). ``merge_attention``
combines partial results over disjoint key sets.
"""

from lcm.attention import all_gather as all_gather
from lcm.attention import blockwise as blockwise
from lcm.attention import context as context
from lcm.attention import layouts as layouts
from lcm.attention import pallas as pallas
from lcm.attention import reference as reference
from lcm.attention import ring as ring
from lcm.attention import sparse as sparse
from lcm.attention import ulysses as ulysses
from lcm.attention import xla as xla
from lcm.attention.core import ATTENTION as ATTENTION
from lcm.attention.core import Capabilities as Capabilities
from lcm.attention.core import Implementation as Implementation
from lcm.attention.core import OptionError as OptionError
from lcm.attention.core import attend as attend
from lcm.attention.core import check_capabilities as check_capabilities
from lcm.attention.masks import Causal as Causal
from lcm.attention.masks import ChunkedCausal as ChunkedCausal
from lcm.attention.masks import Full as Full
from lcm.attention.masks import Mask as Mask
from lcm.attention.masks import Sink as Sink
from lcm.attention.masks import SlidingWindow as SlidingWindow
from lcm.attention.merge import merge_attention as merge_attention
