"""``config.model.attention`` checks: implementation names, tiles, ring and sparse options.

``check_config`` checks the block alone (and ``seq_len`` against the tiles); ``check_mesh`` the
ring against the mesh axis sizes; ``tile_blocks`` tells other packages' checks which lengths
the configured implementation's tiles must divide. Whether an implementation can serve each
layer's positional scheme is ``lcm.model.spec.build_spec``'s check.
"""

from __future__ import annotations

from kernels_pallas.common import NUM_LANES, NUM_SUBLANES
from lcm import checks
from lcm.attention import core, ring
from lcm.attention import sparse as sparse_lib
from lcm.parallel import mesh as mesh_lib

A = "model.attention."


def tile_blocks(config) -> dict[str, int]:
    """``{"block_q": .., "block_kv": ..}`` when the configured implementation tiles the sequence
    (every length it sees must be a multiple of both), else ``{}``."""
    attention = config.model.attention
    if attention.impl not in core.TILED_IMPLS:
        return {}
    blocks = {key: attention[key] for key in ("block_q", "block_kv")}
    return {key: block for key, block in blocks.items() if checks.is_positive_int(block)}


def tile_message(config, key: str, block: int) -> str:
    """Why a length fails ``tile_blocks``: names the block and the implementation."""
    return (
        f"must be a multiple of model.attention.{key} = {block} "
        f"for model.attention.impl = {config.model.attention.impl!r}"
    )


def _uses_flash_kernel(e: checks.Errors) -> bool:
    """Whether the tiles of the configured implementation run the Pallas flash kernel."""
    impl = e.get(A + "impl")
    return (
        impl == "pallas"
        or (impl == "ring" and e.get(A + "ring_inner") == "pallas")
        or (impl in ("sink_window", "s2_attn") and e.get(A + "sparse_kernel") == "pallas")
    )


def check_config(e: checks.Errors) -> None:
    e.one_of(A + "impl", tuple(core.ATTENTION.names()) + sparse_lib.MODULE_IMPLS)
    e.one_of(A + "ring_axis", mesh_lib.MESH_AXES)
    e.one_of(A + "ring_layout", ring.LAYOUTS)
    e.one_of(A + "ring_inner", tuple(ring.INNER))
    seq_len = e.get("seq_len")
    if _uses_flash_kernel(e) and checks.is_positive_int(seq_len):
        # The kernel's TPU tiling: kv blocks span whole 128-lane vregs, q blocks 8 sublanes.
        for key, multiple in (("block_q", NUM_SUBLANES), ("block_kv", NUM_LANES)):
            block = e.get(A + key)
            if checks.is_positive_int(block) and block % multiple and block < seq_len:
                e.fail(
                    A + key,
                    f"must be a multiple of {multiple} (or >= seq_len) for the Pallas kernel",
                )
    e.positive_int(A + "block_q", A + "block_kv")
    e.positive_int(A + "sparse_block", A + "sparse_top_k", A + "recent")
    e.non_negative_int(A + "sink")
    e.one_of(A + "hsa_weighting", sparse_lib.hsa.WEIGHTINGS)
    e.non_negative_int(A + "sparse_dense_last")  # its period rule: lcm.model.spec.build_spec
    e.one_of(A + "sparse_dense_impl", tuple(core.ATTENTION.names()))
    e.one_of(A + "sparse_kernel", sparse_lib.kernel_slots.KERNELS)
    if e.get(A + "sparse_kernel") == "pallas" and checks.is_positive_int(seq_len):
        # The block-sparse kernel's kv blocks span whole 128-lane vregs (or all keys).
        # (sink_window's block_q / block_kv are checked with the flash kernel's users above.)
        impl = e.get(A + "impl")
        key = {"moba": "sparse_block", "hsa": "sparse_block", "nsa": "nsa_slc_block"}.get(impl)
        block = e.get(A + key) if key else None
        if checks.is_positive_int(block) and block % NUM_LANES and block < seq_len:
            e.fail(
                A + key,
                f"must be a multiple of {NUM_LANES} (or >= seq_len) for "
                f"model.attention.sparse_kernel = 'pallas' with model.attention.impl = {impl!r}",
            )
    e.positive_int(*(A + "nsa_" + key for key in ("cmp_block", "cmp_stride", "slc_block",
                                                  "top_n", "window")))  # fmt: skip
    e.non_negative_int(A + "nsa_init_blocks", A + "nsa_local_blocks")
    stride = e.get(A + "nsa_cmp_stride")
    if checks.is_positive_int(stride):
        for key in ("nsa_cmp_block", "nsa_slc_block"):
            e.check(
                A + key,
                lambda v, stride=stride: v % stride == 0,
                f"must be a multiple of model.attention.nsa_cmp_stride = {stride}",
            )
    if e.get(A + "impl") == "s2_attn":
        e.check(
            A + "sparse_block",
            lambda v: v >= 2,
            "must be >= 2 for model.attention.impl = 's2_attn'",
        )
    if checks.is_positive_int(seq_len):
        for key, block in tile_blocks(e.config).items():
            if seq_len % block:
                e.fail("seq_len", tile_message(e.config, key, block))


def check_mesh(e: checks.Errors, sizes: dict[str, int]) -> None:
    """The ring's sequence split against the mesh axis sizes."""
    seq_len = e.get("seq_len")
    if e.get(A + "impl") != "ring" or not checks.is_positive_int(seq_len):
        return
    axis, layout = e.get(A + "ring_axis"), e.get(A + "ring_layout")
    chunks = ring.layout_chunks(layout, sizes[axis])
    if seq_len % chunks:
        e.fail(
            "seq_len",
            f"must be a multiple of {chunks} for the {layout!r} ring layout over mesh "
            f"axis {axis!r} of size {sizes[axis]}",
        )
