"""Flash attention kernel (Mosaic when lowered for TPU; jax's Pallas interpreter elsewhere)."""

from kernels_pallas.flash.kernel import BlockSizes as BlockSizes
from kernels_pallas.flash.kernel import flash_attention as flash_attention
from kernels_pallas.flash.kernel import flash_attention_bwd as flash_attention_bwd
from kernels_pallas.flash.reference import mha_reference as mha_reference
