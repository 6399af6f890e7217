"""Context-parallel strategies beside ring: all_gather, ulysses, usp (lcm.attention.context).

The conformance test runs each over the mask / segment / hook grid on a (data=2, context=4)
mesh; here: every token layout (laid out over ``Implementation.layout_shards``), heads also
split by tensor parallelism, the collectives each strategy compiles to, and the refusals.
"""

import jax
import numpy as np
import pytest

from lcm import attention
from lcm import config as config_lib
from lcm.attention import ATTENTION, layouts
from lcm.model import build_spec
from lcm.parallel import mesh as mesh_lib
from lcm.parallel import sharding
from tests.attention.conformance_test import SoftCapAlibi
from tests.conftest import ATTENTION_TOL, assert_close

STRATEGIES = ("all_gather", "ulysses", "usp")


def _mesh(devices, shape):
    return mesh_lib.make_mesh(
        {"axes": mesh_lib.MESH_AXES, "shape": shape, "axis_types": "auto"}, devices=devices
    )


def _inputs(b=2, t=64, n=4, kh=2, h=8):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((b, t, n, h), dtype=np.float32)
    k, v = (rng.standard_normal((b, t, kh, h), dtype=np.float32) for _ in range(2))
    pos = np.tile(np.arange(t, dtype=np.int32), (b, 1))
    seg = np.ones((b, t), np.int32)
    seg[0, 21:], pos[0, 21:] = 2, pos[0, 21:] - 21  # two packed documents in row 0
    seg[1, -5:] = 0  # padding at the end of row 1
    return q, k, v, pos, seg


def _loss_and_grads(impl, mask, pos, seg, logits_fn=None):
    def loss(q, k, v):
        out, lse = attention.attend(
            q, k, v, mask=mask, impl=impl, q_pos=pos, k_pos=pos, q_segment_ids=seg,
            kv_segment_ids=seg, logits_fn=logits_fn, return_lse=True,
        )  # fmt: skip
        w = np.linspace(-1, 1, out.size, dtype=np.float32).reshape(out.shape)
        return (out * w).sum() + np.float32(0.1) * jax.numpy.where(jax.numpy.isfinite(lse), lse,
                                                                 0).sum()  # fmt: skip

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


@pytest.mark.multidevice
@pytest.mark.parametrize(
    "name, options, layout, shape",
    [
        ("all_gather", {}, "zigzag", (2, 1, 4, 1)),
        pytest.param("all_gather", {}, "striped", (1, 1, 8, 1), marks=pytest.mark.slow),
        pytest.param("ulysses", {}, "zigzag", (2, 1, 4, 1), marks=pytest.mark.slow),
        # 8 heads: tensor 4, then 2 per device for Ulysses over 2
        pytest.param("ulysses", {}, "contiguous", (1, 1, 2, 4), marks=pytest.mark.slow),
        # a ring of 4 groups of 2
        pytest.param("usp", {"degree": 2}, "zigzag", (1, 1, 8, 1), marks=pytest.mark.slow),
        pytest.param("usp", {"degree": 4}, "striped", (1, 1, 8, 1), marks=pytest.mark.slow),
        ("usp", {"degree": 2}, "zigzag", (1, 1, 4, 2)),  # heads: tensor 2 x Ulysses 2
    ],
)
def test_strategy_matches_reference_in_its_layout(devices8, name, options, layout, shape):
    """Global arrays in ``layout`` order over the implementation's layout shards, a causal
    window with sinks, packed documents and padding: loss and q/k/v gradients as reference."""
    if shape[3] == 4:  # 8 heads over tensor 4: 2 per device, split by Ulysses over context 2
        q, k, v, pos, seg = _inputs(n=8, kh=4)
    else:
        q, k, v, pos, seg = _inputs()
    impl = ATTENTION.get(name)(layout=layout, block_q=8, block_kv=8, **options)
    shards = impl.layout_shards(shape[2])
    q, k, v, pos, seg = (layouts.permute(x, layout, shards) for x in (q, k, v, pos, seg))
    mask = (attention.SlidingWindow(9) | attention.Sink(3)) & attention.Causal()
    with sharding.use_mesh(_mesh(devices8, shape)):
        loss, grads = _loss_and_grads(impl, mask, pos, seg)(q, k, v)
    want_loss, want_grads = _loss_and_grads("reference", mask, pos, seg)(q, k, v)
    assert_close(loss, want_loss, ATTENTION_TOL[np.float32], f"{name} loss")
    for what, g, w in zip("qkv", grads, want_grads, strict=True):
        assert_close(g, w, ATTENTION_TOL[np.float32], f"{name} d{what}")


def _hlo(name, devices, shape, **options):
    q, k, v, pos, seg = _inputs()
    grads = _loss_and_grads(ATTENTION.get(name)(block_q=8, block_kv=8, **options),
                            attention.Causal(), pos, seg)  # fmt: skip
    with sharding.use_mesh(_mesh(devices, shape)):
        return grads.lower(q, k, v).compile().as_text()


@pytest.mark.slow  # the TPU train steps of tests/compile/aot_test.py assert the same
@pytest.mark.multidevice
def test_collectives_each_strategy_compiles_to(devices8):
    """all_gather: gathers K/V and reduce-scatters dK/dV, no ring; ulysses: all-to-alls, no
    ring and no gather of q/k/v; usp: all-to-alls within groups and a ring across them."""
    gather = _hlo("all_gather", devices8, (2, 1, 4, 1))
    assert "all-gather" in gather and "reduce-scatter" in gather
    assert "collective-permute" not in gather
    uly = _hlo("ulysses", devices8, (2, 1, 4, 1))
    assert "all-to-all" in uly and "collective-permute" not in uly
    usp = _hlo("usp", devices8, (1, 1, 8, 1), degree=2)
    assert "all-to-all" in usp and "collective-permute" in usp
    # the all-to-alls run within groups of 2 consecutive devices, the ring across them
    assert "replica_groups={{0,1},{2,3},{4,5},{6,7}}" in usp
    assert "source_target_pairs={{0,2},{1,3},{2,4},{3,5},{4,6},{5,7},{6,0},{7,1}}" in usp


@pytest.mark.multidevice
def test_refusals_name_the_cause(devices8):
    q, k, v, pos, seg = _inputs()
    causal = attention.Causal()
    mesh8 = _mesh(devices8, (1, 1, 8, 1))
    heads = r"ulysses: 4 query heads per device .* must be a multiple of the Ulysses degree 8"
    with sharding.use_mesh(mesh8), pytest.raises(ValueError, match=heads):
        _loss_and_grads("ulysses", causal, pos, seg)(q, k, v)
    usp3 = ATTENTION.get("usp")(degree=3)
    degree = r"usp: Ulysses degree 3 \(config.model.attention.ulysses_degree\) must divide"
    with sharding.use_mesh(mesh8), pytest.raises(ValueError, match=degree):
        _loss_and_grads(usp3, causal, pos, seg)(q, k, v)
    with pytest.raises(ValueError, match="attention option degree = 0: must be a positive"):
        ATTENTION.get("usp")(degree=0)
    hook = r"impl 'ulysses' cannot serve this attend\(\) call: it lacks per_head_logits"
    with pytest.raises(ValueError, match=hook):
        _loss_and_grads("ulysses", causal, pos, seg, logits_fn=SoftCapAlibi())(q, k, v)
    with pytest.raises(ValueError, match="impl 'all_gather' needs a mesh with axis 'context'"):
        _loss_and_grads("all_gather", causal, pos, seg)(q, k, v)


def test_layout_shards_follow_the_ulysses_degree():
    ring, uly, usp = (ATTENTION.get(n)(**o) for n, o in (("ring", {}), ("ulysses", {}),
                                                         ("usp", {"degree": 4})))  # fmt: skip
    assert (ring.layout_shards(8), uly.layout_shards(8), usp.layout_shards(8)) == (8, 1, 2)
    for name in STRATEGIES:
        assert ATTENTION.get(name)().mesh_axis == "context"


def test_alibi_is_refused_where_heads_are_split_and_served_by_all_gather():
    config = config_lib.base_config()
    config.model.positional.name = "alibi"
    config.model.attention.impl = "all_gather"
    assert build_spec(config).attention.name == "all_gather"
    config.model.attention.impl = "usp"
    with pytest.raises(ValueError, match=r"'usp' cannot serve positional scheme 'alibi'.*per_head"):
        build_spec(config)
