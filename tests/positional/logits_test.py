"""Logits hooks (ALiBi, TAPA, SelfExtend, LM-Infinite) against naive dense oracles.

Every oracle repeats kv heads explicitly (``jnp.repeat``: query head n reads kv head n // G)
and uses an independent formulation: complex pairs ``q_c · conj(k_c) · e^{i·distance·θ}`` for
the RoPE remappings, with the distance tables spelled out from the papers. Outputs and
``jax.vjp`` gradients are compared, GQA included, with packed (non-arange) positions and T != S.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcm.positional.alibi import ALiBi, alibi_slopes
from lcm.positional.remap import LMInfinite, SelfExtend
from lcm.positional.rope import RoPE
from lcm.positional.tapa import TAPA

SCALE = 0.37  # not 1/sqrt(H), so a hook that ignores `scale` fails
B, T, S, N, K, H = 2, 5, 7, 4, 2, 8
Q_POS = np.array([[3, 4, 5, 6, 7], [0, 1, 2, 10, 11]], np.int32)
K_POS = np.array([[0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 8, 9, 10, 11]], np.int32)


def _inputs(seed=0, n=N, kv=K, h=H):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((B, T, n, h)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((B, S, kv, h)), jnp.float32)
    return q, k


def _heads_first(q, k):
    k = jnp.repeat(k, q.shape[2] // k.shape[2], axis=2)  # [B,S,N,H]
    return q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3)  # [B,N,T,H], [B,N,S,H]


def rope_oracle(q, k, distance, inv_freq, scale):
    """scale · Re Σ_i q_c,i conj(k_c,i) e^{i·distance·θ_i} (half layout pairs)."""
    q, k = _heads_first(q, k)
    half = len(inv_freq)
    qc = q[..., :half] + 1j * q[..., half:]
    kc = k[..., :half] + 1j * k[..., half:]
    z = qc[:, :, :, None, :] * jnp.conj(kc)[:, :, None, :, :]  # [B,N,T,S,h]
    phase = jnp.exp(1j * jnp.asarray(distance, jnp.float32)[:, None, :, :, None] * inv_freq)
    return scale * jnp.real(jnp.sum(z * phase, -1))


@jax.jit
def _value_and_vjp(fn, q, k, cotangent):
    out, vjp = jax.vjp(fn, q, k)
    return out, vjp(cotangent)


def _check_outputs_and_grads(hook, oracle, q, k, rtol=1e-5, atol=1e-5):
    cotangent = jnp.asarray(
        np.random.default_rng(9).standard_normal((B, q.shape[2], T, S)), jnp.float32
    )
    out, grads = _value_and_vjp(
        jax.tree_util.Partial(lambda q, k: hook(q, k, Q_POS, K_POS, scale=SCALE)), q, k, cotangent
    )
    want, grads_want = _value_and_vjp(jax.tree_util.Partial(oracle), q, k, cotangent)
    assert out.dtype == jnp.float32 and out.shape == (B, q.shape[2], T, S)
    np.testing.assert_allclose(out, want, rtol=rtol, atol=atol)
    for got, expected in zip(grads, grads_want, strict=True):
        assert float(jnp.abs(expected).max()) > 0
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)


# ---- ALiBi ----------------------------------------------------------------------------------


def test_alibi_slopes_reference_values():
    np.testing.assert_allclose(alibi_slopes(8), [2.0**-i for i in range(1, 9)])
    np.testing.assert_allclose(
        alibi_slopes(12),
        [2.0**-i for i in range(1, 9)] + [0.707107, 0.353553, 0.176777, 0.0883883],
        rtol=2e-6,
    )
    slopes = alibi_slopes(32)
    assert slopes[0] == pytest.approx(0.840896, rel=1e-6) and slopes[-1] == 0.00390625


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_alibi_matches_formula_with_gqa(kv_heads):
    q, k = _inputs(kv=kv_heads)
    slopes = jnp.asarray([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8], jnp.float32)  # N = 4

    def oracle(q, k):
        qh, kh = _heads_first(q, k)
        dot = jnp.einsum("bnth,bnsh->bnts", qh, kh, precision="highest")
        distance = jnp.abs(Q_POS[:, None, :, None] - K_POS[:, None, None, :])
        return SCALE * dot - slopes[None, :, None, None] * distance

    _check_outputs_and_grads(ALiBi(num_heads=N), oracle, q, k)


# ---- TAPA -----------------------------------------------------------------------------------


def test_tapa_reference_vector():
    hook = TAPA(head_dim=4)  # θ = 0.5, α = 0.1
    q = jnp.asarray([1.0, 0.0, 1.0, 0.0]).reshape(1, 1, 1, 4)
    k_pos = jnp.asarray([[0, 1, 1000, 65536]], jnp.int32)
    run = jax.jit(functools.partial(hook, scale=0.5))
    out = run(q, jnp.tile(q, (1, 4, 1, 1)), jnp.zeros((1, 1), jnp.int32), -k_pos)
    np.testing.assert_allclose(
        out[0, 0, 0], [0.707107, -0.188271, -0.599077, 0.438474], rtol=2e-5, atol=1e-6
    )


def test_tapa_matches_formula_with_gqa_and_grads_flow():
    q, k = _inputs(1)
    a = 4  # θ·H

    def oracle(q, k):
        qh, kh = _heads_first(q, k)
        amp = jnp.einsum("bnth,bnsh->bnts", qh[..., :a], kh[..., :a], precision="highest")
        phase = jnp.einsum("bnth,bnsh->bnts", qh[..., a:], kh[..., a:], precision="highest")
        distance = jnp.abs(Q_POS[:, None, :, None] - K_POS[:, None, None, :]).astype(jnp.float32)
        # Default scale 1/√H turns scale·√(H/a) into the paper's 1/√(θH).
        return (SCALE * math.sqrt(H / a) * amp) * jnp.cos(
            2 * math.pi * distance**0.1 * phase / math.sqrt(H - a)
        )

    _check_outputs_and_grads(TAPA(head_dim=H), oracle, q, k, rtol=2e-5, atol=2e-5)
    grads = jax.jit(jax.grad(lambda q: TAPA(head_dim=H)(q, k, Q_POS, K_POS, scale=SCALE).sum()))(q)
    assert bool(jnp.all(jnp.isfinite(grads))) and float(jnp.abs(grads).max()) > 0


def test_tapa_rejects_bad_split():
    with pytest.raises(ValueError, match=r"tapa theta = 0\.3: must be in \(0, 1\)"):
        TAPA(head_dim=8, theta=0.3)


# ---- SelfExtend -----------------------------------------------------------------------------


def self_extend_distance(i, j, group, window):
    """Jin et al.: true distance inside the window, grouped positions outside."""
    if i - j < window:
        return i - j
    return (i // group + window - window // group) - j // group


SELF_EXTEND_TABLE = [  # G = 8, W = 1024 (reference file, section 18)
    ((5000, 4500), 500),
    ((5000, 3977), 1023),
    ((5000, 3976), 1024),
    ((5000, 100), 1509),
    ((25599, 0), 4095),
]


def test_self_extend_reproduces_distance_table():
    hook = SelfExtend(RoPE(head_dim=8), group=8, window=1024)
    for (i, j), want in SELF_EXTEND_TABLE:
        assert self_extend_distance(i, j, 8, 1024) == want
        got = hook.distance(jnp.asarray([[i]]), jnp.asarray([[j]]))
        assert int(got[0, 0, 0]) == want, (i, j)
    # (L - W)·G + W = 25600 for L = 4096: the last position maps to distance L - 1.
    assert (4096 - 1024) * 8 + 1024 == 25600


def test_self_extend_logits_see_the_table_distances():
    rope = RoPE(head_dim=8)
    hook = SelfExtend(rope, group=8, window=1024)
    q, k = _inputs(2, n=1, kv=1)
    q, k = q[:1, :1], k[:1, :4]
    k_pos = jnp.asarray([[4500, 3977, 3976, 100]], jnp.int32)
    out = jax.jit(functools.partial(hook, scale=1.0))(q, k, jnp.asarray([[5000]]), k_pos)
    inv_freq = jnp.asarray(rope.frequencies().inv_freq)
    want = rope_oracle(q, k, jnp.asarray([[[500, 1023, 1024, 1509]]]), inv_freq, 1.0)
    np.testing.assert_allclose(out, want, atol=2e-3)
    wrong = rope_oracle(q, k, jnp.asarray([[[500, 1023, 1023, 1508]]]), inv_freq, 1.0)
    assert float(jnp.abs(out - wrong).max()) > 0.05  # off-by-one distances are detected


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_self_extend_matches_dense_oracle_with_gqa(kv_heads):
    q, k = _inputs(3, kv=kv_heads)
    rope = RoPE(head_dim=H)
    distance = np.array(
        [
            [[self_extend_distance(i, j, 2, 3) for j in kp] for i in qp]
            for qp, kp in zip(Q_POS, K_POS, strict=True)
        ]
    )
    inv_freq = jnp.asarray(rope.frequencies().inv_freq)
    _check_outputs_and_grads(
        SelfExtend(rope, group=2, window=3),
        lambda q, k: rope_oracle(q, k, distance, inv_freq, SCALE),
        q,
        k,
    )


# ---- LM-Infinite ----------------------------------------------------------------------------


def test_lm_infinite_reproduces_distance_and_visibility_table():
    hook = LMInfinite(RoPE(head_dim=8), n_global=10, n_local=4096)
    table = [  # reference file, section 19: (i, j) -> distance, or masked
        ((10000, 5), 4096),
        ((10000, 6000), 4000),
        ((10000, 9000), 1000),
        ((3000, 5), 2995),
        ((10000, 20), None),
    ]
    for (i, j), want in table:
        q_pos, k_pos = jnp.asarray([[i]]), jnp.asarray([[j]])
        assert bool(hook.visible(q_pos, k_pos)[0, 0, 0]) == (want is not None), (i, j)
        if want is not None:
            assert int(hook.distance(q_pos, k_pos)[0, 0, 0]) == want, (i, j)


def test_lm_infinite_logits_see_the_ceiling():
    rope = RoPE(head_dim=8)
    hook = LMInfinite(rope, n_global=10, n_local=4096)
    q, k = _inputs(4, n=1, kv=1)
    q, k = q[:1, :1], k[:1, :3]
    k_pos = jnp.asarray([[5, 6000, 9000]])
    out = jax.jit(functools.partial(hook, scale=1.0))(q, k, jnp.asarray([[10000]]), k_pos)
    inv_freq = jnp.asarray(rope.frequencies().inv_freq)
    np.testing.assert_allclose(
        out, rope_oracle(q, k, jnp.asarray([[[4096, 4000, 1000]]]), inv_freq, 1.0), atol=2e-3
    )


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_lm_infinite_matches_dense_oracle_with_gqa(kv_heads):
    q, k = _inputs(5, kv=kv_heads)
    rope = RoPE(head_dim=H, layout="half")
    hook = LMInfinite(rope, n_global=1, n_local=4, max_distance=3)
    distance = np.minimum(Q_POS[:, :, None] - K_POS[:, None, :], 3)
    inv_freq = jnp.asarray(rope.frequencies().inv_freq)
    _check_outputs_and_grads(hook, lambda q, k: rope_oracle(q, k, distance, inv_freq, SCALE), q, k)


def test_remaps_refuse_length_dependent_rope():
    dynamic = RoPE(
        head_dim=8,
        rope_scaling={"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 8},
    )
    with pytest.raises(ValueError, match="rope_type='dynamic' is not supported"):
        SelfExtend(dynamic)
    with pytest.raises(ValueError, match="rope_type='dynamic' is not supported"):
        LMInfinite(dynamic)


# ---- the hook contract ----------------------------------------------------------------------


HOOKS = [
    ALiBi(num_heads=N),
    TAPA(head_dim=H),
    SelfExtend(RoPE(head_dim=H), group=2, window=3),
    LMInfinite(RoPE(head_dim=H), n_global=1, n_local=4),
]


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: type(h).__name__)
def test_hooks_are_hashable_static_arguments_with_identity_rotate(hook):
    assert hook.logits_fn is hook and hash(hook) == hash(type(hook)(**vars(hook)))
    q, k = _inputs(6)
    assert hook.rotate(q, k, Q_POS, K_POS) == (q, k)
    run = jax.jit(lambda fn, q, k: fn(q, k, Q_POS, K_POS, scale=SCALE), static_argnums=0)
    np.testing.assert_allclose(
        run(hook, q, k), hook(q, k, Q_POS, K_POS, scale=SCALE), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="multiple of kv heads"):
        hook(q, k[:, :, :1].repeat(3, axis=2), Q_POS, K_POS, scale=SCALE)
