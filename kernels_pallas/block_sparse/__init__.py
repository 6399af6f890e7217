"""Block-sparse attention over per-q-block kv block lists (Mosaic on TPU; interpreted elsewhere)."""

from kernels_pallas.block_sparse.block_lists import BlockLists as BlockLists
from kernels_pallas.block_sparse.block_lists import block_lists_from_ids as block_lists_from_ids
from kernels_pallas.block_sparse.block_lists import (
    block_lists_from_kinds as block_lists_from_kinds,
)
from kernels_pallas.block_sparse.block_lists import block_lists_from_mask as block_lists_from_mask
from kernels_pallas.block_sparse.block_lists import dense_tile_kinds as dense_tile_kinds
from kernels_pallas.block_sparse.block_lists import mask_tile_kinds as mask_tile_kinds
from kernels_pallas.block_sparse.kernel import block_sparse_attention as block_sparse_attention
from kernels_pallas.block_sparse.kernel import (
    block_sparse_attention_bwd as block_sparse_attention_bwd,
)
from kernels_pallas.block_sparse.reference import block_sparse_reference as block_sparse_reference
