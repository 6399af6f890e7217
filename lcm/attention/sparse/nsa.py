"""NSA, Native Sparse Attention (Yuan et al. 2025, arXiv 2502.11089).

Three branches per query, mixed by per-head sigmoid gates: compressed blocks (a learned linear
``phi``), selected blocks (scored by the compression probabilities) and a sliding window.
``nsa_attention`` is the math on a parameter dict; ``NSA`` is the linen module the model uses for
``impl = "nsa"``. See docs/attention.md#nsa.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lcm.attention import blockwise, core, pallas
from lcm.attention import masks as masks_lib
from lcm.attention.sparse import gathered, kernel_slots

_F32 = jnp.float32
_HIGHEST = lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class NSASettings:
    cmp_block: int = 32  # l: compression block length
    cmp_stride: int = 16  # d: compression stride
    slc_block: int = 64  # l': selection block length
    slc_top_n: int = 16  # n: selected blocks per query (initial and local ones included)
    init_blocks: int = 1  # always-selected initial blocks
    local_blocks: int = 2  # always-selected most recent blocks (own block included)
    window: int = 512  # sliding-window keys, the query included
    query_tile: int = 64  # queries of the compression branch processed together
    chunk: int = 128  # (query, block) pairs per dense product of the selection branch
    kernel: str = "blockwise"  # selection and window branches: blockwise | pallas
    interpret: Any = None  # the Pallas kernels' interpret mode (None = automatic)

    def __post_init__(self):
        kernel_slots.check_kernel(self.kernel, "nsa")
        for f in dataclasses.fields(self):
            if f.name in ("kernel", "interpret"):
                continue
            value = getattr(self, f.name)
            low = 0 if f.name in ("init_blocks", "local_blocks") else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"nsa {f.name} = {value!r}: must be an integer >= {low}")
        if self.cmp_block % self.cmp_stride or self.slc_block % self.cmp_stride:
            raise ValueError(
                f"nsa cmp_block = {self.cmp_block} and slc_block = {self.slc_block} must be "
                f"multiples of cmp_stride = {self.cmp_stride}"
            )


def compress(x, weight, settings: NSASettings):
    """``x [B,S,K,H] -> [B,nc,K,H]``: ``phi`` of each block ``[i*d, i*d + l)``.

    ``weight [l,H,H]``; ``nc = (S - l) // d + 1`` (0 when S < l).
    """
    l, d = settings.cmp_block, settings.cmp_stride
    s = x.shape[1]
    nc = max((s - l) // d + 1, 0)
    idx = jnp.arange(nc)[:, None] * d + jnp.arange(l)[None, :]  # [nc, l]
    blocks = x[:, idx].astype(_F32)  # [B, nc, l, K, H]
    # M = nc blocks of W = l tokens; E is phi's output head_dim (= H).
    return jnp.einsum("BMWKH,WHE->BMKE", blocks, weight.astype(_F32), precision=_HIGHEST)


def _compressed_meta(k_pos, kv_seg, settings):
    """End position ``[B,nc]`` and segment (0 unless the block is one segment) of each block."""
    l, d = settings.cmp_block, settings.cmp_stride
    nc = max((k_pos.shape[1] - l) // d + 1, 0)
    first, last = jnp.arange(nc) * d, jnp.arange(nc) * d + l - 1
    seg = jnp.where(kv_seg[:, first] == kv_seg[:, last], kv_seg[:, last], 0)
    return k_pos[:, last], seg


def _overlap(settings, nc, ns):
    """``[nc, ns]`` float: compressed block i overlaps selection block j."""
    l, d, ls = settings.cmp_block, settings.cmp_stride, settings.slc_block
    start = jnp.arange(nc)[:, None] * d
    sel = jnp.arange(ns)[None, :] * ls
    return ((start < sel + ls) & (start + l > sel)).astype(_F32)


def _select(p_cmp, start, c, settings, ns, kh):
    """Selection ids ``[B,C,N,n]`` and validity from compression probabilities ``[B,C,N,nc]``."""
    b, _, n, nc = p_cmp.shape
    # C queries of the tile, M = nc compressed blocks, J = ns selection blocks.
    score = jnp.einsum("BCNM,MJ->BCNJ", p_cmp, _overlap(settings, nc, ns), precision=_HIGHEST)
    score = score.reshape(b, c, kh, n // kh, ns).sum(3)  # shared by the GQA group
    own = jnp.minimum((start + jnp.arange(c)) // settings.slc_block, ns - 1)[:, None]
    j = jnp.arange(ns)[None, :]
    forced = (j < settings.init_blocks) | ((j > own - settings.local_blocks) & (j <= own))
    score = jnp.where(forced[None, :, None], jnp.inf, score)
    score = jnp.where((j <= own)[None, :, None], score, -jnp.inf)
    values, ids = lax.top_k(score, min(settings.slc_top_n, ns))  # [B, C, K, n]
    ids = jnp.repeat(ids.astype(jnp.int32), n // kh, axis=2)
    return ids, jnp.repeat(values > -jnp.inf, n // kh, axis=2)


def _cmp_attention(q, kc, vc, cpos, cseg, q_pos, q_seg, scale):
    """Compression branch for a query tile: ``(out [B,C,N,H], probabilities [B,C,N,nc])``."""
    b, c, n, h = q.shape
    kh = kc.shape[2]
    # C queries of the tile, M = nc compressed blocks.
    s = scale * jnp.einsum(
        "BCKGH,BMKH->BCKGM", q.astype(_F32).reshape(b, c, kh, n // kh, h), kc, precision=_HIGHEST
    ).reshape(b, c, n, -1)
    visible = (cpos[:, None, :] <= q_pos[:, :, None]) & (cseg[:, None, :] == q_seg[:, :, None])
    visible = visible & (q_seg[:, :, None] != 0)
    s = jnp.where(visible[:, :, None], s, -jnp.inf)
    m = lax.stop_gradient(s.max(-1, keepdims=True))
    e = jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0))
    p = e / jnp.maximum(e.sum(-1, keepdims=True), jnp.finfo(_F32).tiny)
    out = jnp.einsum(
        "BCKGM,BMKH->BCKGH", p.reshape(b, c, kh, n // kh, -1), vc, precision=_HIGHEST
    ).reshape(b, c, n, h)
    return out, p


def gates(params, x):
    """Per-head branch gates ``sigmoid(x W + b)``: ``[B,T,N,3]`` (cmp, slc, win)."""
    # A = the three branches.
    g = jnp.einsum("BTD,DNA->BTNA", x.astype(_F32), params["gate_w"].astype(_F32))
    return jax.nn.sigmoid(g + params["gate_b"].astype(_F32))


def _check(q, k, settings):
    if not isinstance(settings, NSASettings):
        raise ValueError(f"nsa settings must be an NSASettings, got {type(settings).__name__}")
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"nsa is self-attention: q length {q.shape[1]} != k length {k.shape[1]}")


def nsa_attention(params, x, q, k, v, *, settings: NSASettings, q_pos, k_pos,
                  q_segment_ids=None, kv_segment_ids=None, scale=None):  # fmt: skip
    """NSA of ``q [B,T,N,H]`` over ``k, v [B,T,K,H]`` with gates from ``x [B,T,D]``.

    ``params``: ``cmp_wk, cmp_wv [l,H,H]``, ``gate_w [D,N,3]``, ``gate_b [N,3]``.
    Returns ``[B,T,N,H]`` in ``q.dtype``.
    """
    _check(q, k, settings)
    scale = core.default_scale(q.shape[-1]) if scale is None else float(scale)
    q_seg = core.segments_or_ones(q_segment_ids, q)
    kv_seg = core.segments_or_ones(kv_segment_ids, k)
    kc = compress(k, params["cmp_wk"], settings)
    vc = compress(v, params["cmp_wv"], settings)
    cpos, cseg = _compressed_meta(k_pos, kv_seg, settings)
    ns = -(-k.shape[1] // settings.slc_block)
    kh = k.shape[2]

    def tile(start, q_t, qp_t, qs_t):
        o_cmp, p_cmp = _cmp_attention(q_t, kc, vc, cpos, cseg, qp_t, qs_t, scale)
        ids, valid = _select(lax.stop_gradient(p_cmp), start, q_t.shape[1], settings, ns, kh)
        return o_cmp, ids, valid

    o_cmp, ids, valid = gathered.scan_query_tiles(tile, settings.query_tile, q, q_pos, q_seg)
    out, lse = kernel_slots.pick(settings.kernel, settings.interpret)(
        q, k, v, ids, valid, block=settings.slc_block, q_pos=q_pos, k_pos=k_pos, q_seg=q_seg,
        kv_seg=kv_seg, scale=scale, chunk=settings.chunk,
    )  # fmt: skip
    o_slc, _ = gathered.merge_slots(out, lse)
    window = masks_lib.Causal() & masks_lib.SlidingWindow(settings.window - 1)
    if settings.kernel == "pallas":
        window_attention = functools.partial(pallas.pallas_attention, interpret=settings.interpret)
    else:
        window_attention = blockwise.blockwise_attention
    o_win, _ = window_attention(
        q, k, v, mask=window, q_pos=q_pos, k_pos=k_pos, q_segment_ids=q_seg,
        kv_segment_ids=kv_seg, logits_fn=None, scale=scale, return_lse=False,
    )  # fmt: skip
    g = gates(params, x)
    out = g[..., 0:1] * o_cmp + g[..., 1:2] * o_slc + g[..., 2:3] * o_win.astype(_F32)
    return out.astype(q.dtype)


def nsa_reference(params, x, q, k, v, *, settings: NSASettings, q_pos, k_pos,
                  q_segment_ids=None, kv_segment_ids=None, scale=None):  # fmt: skip
    """Dense float32 NSA: every branch as a masked ``[T, S]`` (or ``[T, nc]``) softmax."""
    q, k, v = (a.astype(_F32) for a in (q, k, v))
    b, t, n, h = q.shape
    s, kh = k.shape[1], k.shape[2]
    g = n // kh
    scale = core.default_scale(h) if scale is None else scale
    q_seg = core.segments_or_ones(q_segment_ids, q)
    kv_seg = core.segments_or_ones(kv_segment_ids, k)
    kc = compress(k, params["cmp_wk"], settings)
    vc = compress(v, params["cmp_wv"], settings)
    cpos, cseg = _compressed_meta(k_pos, kv_seg, settings)

    def softmax_attend(logits, visible, values):
        x_ = jnp.where(visible, logits, -jnp.inf)
        m = lax.stop_gradient(x_.max(-1, keepdims=True))
        e = jnp.exp(x_ - jnp.where(jnp.isfinite(m), m, 0.0))
        p = e / jnp.maximum(e.sum(-1, keepdims=True), jnp.finfo(_F32).tiny)
        return p, jnp.einsum("BNTS,BSNH->BTNH", p, values, precision=_HIGHEST)

    real = (q_seg != 0)[:, None, :, None]
    # M = nc compressed blocks, J = ns selection blocks.
    lc = scale * jnp.einsum("BTNH,BMNH->BNTM", q, jnp.repeat(kc, g, 2), precision=_HIGHEST)
    vis_c = (cpos[:, None, None, :] <= q_pos[:, None, :, None]) & real
    vis_c = vis_c & (cseg[:, None, None, :] == q_seg[:, None, :, None])
    p_cmp, o_cmp = softmax_attend(lc, vis_c, jnp.repeat(vc, g, 2))
    # Selection: per-token block scores summed over the group, forced blocks, top-n.
    ls = settings.slc_block
    ns = -(-s // ls)
    nc = kc.shape[1]
    # Compressed block i covers tokens [i*d, i*d + l); static, so numpy (keeps this jittable).
    toks = np.arange(nc)[:, None] * settings.cmp_stride + np.arange(settings.cmp_block)
    cover = np.zeros((nc, ns), np.float32)
    cover[np.repeat(np.arange(nc), settings.cmp_block), (toks // ls).reshape(-1)] = 1.0
    score = jnp.einsum("BNTM,MJ->BTNJ", lax.stop_gradient(p_cmp), cover, precision=_HIGHEST)
    score = score.reshape(b, t, kh, g, ns).sum(3)
    own = (jnp.arange(t) // ls)[:, None]
    j = jnp.arange(ns)[None, :]
    init = j < settings.init_blocks
    local = (own - j >= 0) & (own - j < settings.local_blocks)
    score = jnp.where((init | local)[None, :, None], jnp.inf, score)
    score = jnp.where((j <= own)[None, :, None], score, -jnp.inf)
    values, ids = lax.top_k(score, min(settings.slc_top_n, ns))  # [B, T, K, n]
    chosen = (ids[..., None] == jnp.arange(ns)) & (values > -jnp.inf)[..., None]
    chosen = jnp.repeat(chosen.any(-2), g, axis=2)  # [B, T, N, ns]
    allowed = jnp.moveaxis(chosen, 2, 1)[..., jnp.arange(s) // ls]  # [B, N, T, S]
    causal = (k_pos[:, None, None, :] <= q_pos[:, None, :, None]) & real
    causal = causal & (kv_seg[:, None, None, :] == q_seg[:, None, :, None])
    lk = scale * jnp.einsum("BTNH,BSNH->BNTS", q, jnp.repeat(k, g, 2), precision=_HIGHEST)
    vr = jnp.repeat(v, g, 2)
    _, o_slc = softmax_attend(lk, causal & allowed, vr)
    in_window = k_pos[:, None, None, :] > q_pos[:, None, :, None] - settings.window
    _, o_win = softmax_attend(lk, causal & in_window, vr)
    gt = gates(params, x)
    return gt[..., 0:1] * o_cmp + gt[..., 1:2] * o_slc + gt[..., 2:3] * o_win


class NSA(nn.Module):
    """The learned parameters of NSA (compression maps, gates) around ``nsa_attention``."""

    settings: NSASettings
    num_heads: int
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, q, k, v, q_pos, k_pos, q_segment_ids=None, kv_segment_ids=None):
        st, h = self.settings, q.shape[-1]
        init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=(0, 1))
        params = {
            "cmp_wk": self.param("cmp_wk", init, (st.cmp_block, h, h), self.param_dtype),
            "cmp_wv": self.param("cmp_wv", init, (st.cmp_block, h, h), self.param_dtype),
            "gate_w": self.param(
                "gate_w",
                nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
                (x.shape[-1], self.num_heads, 3),
                self.param_dtype,
            ),
            "gate_b": self.param("gate_b", nn.initializers.zeros, (self.num_heads, 3)),
        }
        return nsa_attention(
            params, x, q, k, v, settings=st, q_pos=q_pos, k_pos=k_pos,
            q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
        )  # fmt: skip


def _describe(**options) -> dict:
    try:
        NSASettings(**options)
    except ValueError as err:  # NSASettings names the option first: "nsa <option> = ..."
        option = str(err).split()[1]
        option = option if option in options else "kernel"
        raise core.OptionError(option, options[option], str(err)) from None
    return kernel_slots.describe_blocks(kernel=options["kernel"], block_option="slc_block")


_D = NSASettings()


@core.register(
    "nsa",
    core.Capabilities(
        custom_logits=False,
        segments=True,
        gqa=True,
        needs_mesh=False,
        differentiable=True,
        returns_lse=False,
        any_mask=False,
        has_params=True,
    ),
    config_keys={
        "cmp_block": "nsa_cmp_block",
        "cmp_stride": "nsa_cmp_stride",
        "slc_block": "nsa_slc_block",
        "slc_top_n": "nsa_top_n",
        "init_blocks": "nsa_init_blocks",
        "local_blocks": "nsa_local_blocks",
        "window": "nsa_window",
        "kernel": "sparse_kernel",
    },
    describe=_describe,
)
def nsa_layer(x, q, k, v, q_pos, k_pos, q_segment_ids, kv_segment_ids, num_heads, param_dtype,
              *, cmp_block: int = _D.cmp_block, cmp_stride: int = _D.cmp_stride,
              slc_block: int = _D.slc_block, slc_top_n: int = _D.slc_top_n,
              init_blocks: int = _D.init_blocks, local_blocks: int = _D.local_blocks,
              window: int = _D.window, query_tile: int = _D.query_tile, chunk: int = _D.chunk,
              kernel: str = _D.kernel, interpret: Any = _D.interpret):  # fmt: skip
    """NSA as the model's attention: called inside its linen attention module, so ``NSA``'s
    parameters become that module's child ``nsa``. Options are ``NSASettings``' fields."""
    settings = NSASettings(
        cmp_block=cmp_block, cmp_stride=cmp_stride, slc_block=slc_block, slc_top_n=slc_top_n,
        init_blocks=init_blocks, local_blocks=local_blocks, window=window,
        query_tile=query_tile, chunk=chunk, kernel=kernel, interpret=interpret,
    )  # fmt: skip
    module = NSA(settings, num_heads, param_dtype, name="nsa")
    return module(x, q, k, v, q_pos, k_pos, q_segment_ids, kv_segment_ids)
