"""apply_rope / RoPE scheme against closed forms, and min_base against Men et al.

Oracle for rotations: a float64 numpy complex-number rotation (pair (a, b) -> (a + ib)·e^{imθ}),
written independently of the library's real-valued code.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lcm.positional import rope as rope_lib
from lcm.positional.base_bound import rope_score_bound
from lcm.positional.rope import RoPE, apply_rope, min_base, rope_frequencies

X8 = np.arange(1, 9, dtype=np.float32)


def _pairs(x, layout, dim):
    """Complex view of the rotary channels: half pairs (i, i+d/2), interleaved (2i, 2i+1)."""
    x = np.asarray(x, np.float64)[..., :dim]
    if layout == "half":
        return x[..., : dim // 2] + 1j * x[..., dim // 2 :]
    return x[..., 0::2] + 1j * x[..., 1::2]


def oracle_rope(x, positions, inv_freq, layout, attention_factor=1.0):
    """Float64 reference of apply_rope for x [B,T,N,H], positions [B,T]."""
    x = np.asarray(x, np.float64)
    dim = 2 * len(inv_freq)
    angles = np.asarray(positions, np.float64)[:, :, None, None] * np.asarray(inv_freq, np.float64)
    z = _pairs(x, layout, dim) * np.exp(1j * angles) * attention_factor
    if layout == "half":
        rot = np.concatenate([z.real, z.imag], -1)
    else:
        rot = np.stack([z.real, z.imag], -1).reshape(*z.shape[:-1], dim)
    return np.concatenate([rot, x[..., dim:]], -1)


def _x(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def test_reference_vector_both_layouts():
    freqs = rope_frequencies(8, 1e4)
    x = X8.reshape(1, 1, 1, 8)
    pos = jnp.ones((1, 1), jnp.int32)
    np.testing.assert_allclose(
        apply_rope(x, pos, freqs, layout="half")[0, 0, 0],
        [-3.667053, 1.391008, 2.929851, 3.991998, 3.542983, 6.169692, 7.029650, 8.003996],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        apply_rope(x, pos, freqs, layout="interleaved")[0, 0, 0],
        [-1.142640, 1.922076, 2.585679, 4.279517, 4.939751, 6.049699, 6.991997, 8.006996],
        rtol=1e-6,
    )


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_matches_complex_oracle_with_partial_rotary_and_attention_factor(layout, fraction):
    scaling = dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16)
    freqs = rope_frequencies(16, 1e4, scaling, partial_rotary_factor=fraction)
    x = _x((2, 5, 3, 16))
    pos = np.array([[0, 1, 7, 100, 511], [3, 2, 1, 0, 1000]], np.int32)  # large m: see below
    got = apply_rope(x, pos, freqs, layout=layout)
    want = oracle_rope(x, pos, freqs.inv_freq, layout, freqs.attention_factor)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)
    dim = int(16 * fraction)
    np.testing.assert_array_equal(got[..., dim:], x[..., dim:])  # pass-through channels


def test_half_and_interleaved_agree_under_channel_permutation():
    perm = np.r_[0:8:2, 1:8:2]  # [0, 2, 4, 6, 1, 3, 5, 7]
    freqs = rope_frequencies(8, 1e4)
    x = _x((2, 4, 3, 8), seed=1)
    pos = np.array([[0, 5, 9, 1000], [7, 7, 2, 30000]], np.int32)
    half = apply_rope(x[..., perm], pos, freqs, layout="half")
    interleaved = apply_rope(x, pos, freqs, layout="interleaved")
    np.testing.assert_allclose(half, np.asarray(interleaved)[..., perm], rtol=1e-6, atol=1e-6)
    # The brief's vector: half(x[P]) == interleaved(x)[P].
    x8 = X8.reshape(1, 1, 1, 8)
    one = jnp.ones((1, 1), jnp.int32)
    np.testing.assert_allclose(
        apply_rope(x8[..., perm], one, freqs, layout="half"),
        np.asarray(apply_rope(x8, one, freqs, layout="interleaved"))[..., perm],
        rtol=1e-6,
    )


def _score(scheme, q, k, m, n):
    qr, kr = scheme.rotate(q, k, jnp.full((1, 1), m, jnp.int32), jnp.full((1, 1), n, jnp.int32))
    return jnp.sum(qr.astype(jnp.float32) * kr.astype(jnp.float32))


SCALINGS = [
    {},
    {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 64},
    {
        "rope_type": "llama3",
        "factor": 8.0,
        "original_max_position_embeddings": 64,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
    },
    {"rope_type": "resonance"},
]


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("scaling", SCALINGS, ids=lambda s: s.get("rope_type", "default"))
@given(
    m=st.integers(0, 5000),
    n=st.integers(0, 5000),
    shift=st.integers(-5000, 5000),
    seed=st.integers(0, 2**16),
)
def test_scores_depend_only_on_relative_position(layout, scaling, m, n, shift, seed):
    scheme = RoPE(head_dim=16, layout=layout, rope_scaling=scaling)
    q, k = _x((1, 1, 1, 16), seed), _x((1, 1, 1, 16), seed + 1)
    shift = max(shift, -min(m, n))  # positions stay >= 0
    base = _score(scheme, q, k, m, n)
    shifted = _score(scheme, q, k, m + shift, n + shift)
    # Float32 angles up to 1e4: error ≲ ulp(1e4)·|q||k|.
    np.testing.assert_allclose(shifted, base, atol=5e-3 * np.linalg.norm(q) * np.linalg.norm(k))


def test_resonance_angles_are_exactly_periodic():
    freqs = rope_frequencies(16, 1e4, {"rope_type": "resonance"})
    pos = jnp.array([[5, 1000, 99999]], jnp.int32)
    angles = rope_lib.rope_angles(pos, freqs)
    shifted = rope_lib.rope_angles(pos[..., None] + freqs.wavelengths, freqs)  # m + λ̃_i per pair
    for i in range(len(freqs.wavelengths)):
        np.testing.assert_array_equal(shifted[0, :, i, i], angles[0, :, i])


def test_angles_are_float32_broadcast_products_not_matmuls():
    freqs = rope_frequencies(16, 1e4)
    jaxpr = str(
        jax.make_jaxpr(lambda x, p: apply_rope(x, p, freqs))(
            _x((1, 2, 1, 16)), X8[:2][None].astype(np.int32)
        )
    )
    assert "dot_general" not in jaxpr
    pos = jnp.array([[257, 256, 8191, 8192]], jnp.int32)  # bf16 would merge each pair
    angles = rope_lib.rope_angles(pos, freqs)
    assert angles.dtype == jnp.float32
    np.testing.assert_array_equal(angles[0, :, 0], [257, 256, 8191, 8192])


def test_bf16_inputs_keep_float32_angles():
    freqs = rope_frequencies(16, 1e4)
    x = jnp.asarray(_x((1, 2, 2, 16)), jnp.bfloat16)
    pos = jnp.array([[257, 256]], jnp.int32)
    got = apply_rope(x, pos, freqs)
    assert got.dtype == jnp.bfloat16
    # Same as rotating the upcast input in float32 and rounding once at the end.
    np.testing.assert_array_equal(
        got, apply_rope(x.astype(jnp.float32), pos, freqs).astype(jnp.bfloat16)
    )
    assert not np.array_equal(got[0, 0], got[0, 1])  # bf16 angles would make 257 == 256


def _oracle_score(q, k, distance, inv_freq):
    z = _pairs(q, "half", 2 * len(inv_freq)) * np.conj(_pairs(k, "half", 2 * len(inv_freq)))
    return float(np.sum(z * np.exp(1j * distance * np.asarray(inv_freq, np.float64))).real)


def test_relative_invariance_holds_near_1e5_with_float32_angles():
    scheme = RoPE(head_dim=128)
    freqs = scheme.frequencies()
    q, k = _x((1, 1, 1, 128), 0), _x((1, 1, 1, 128), 1)
    for distance in (0, 1, 100, 4096):
        want = _oracle_score(q, k, distance, freqs.inv_freq)
        for start in (0, 99_000, 100_000, 100_003):
            got = _score(scheme, q, k, start + distance, start)
            assert abs(float(got) - want) < 1e-2, (distance, start, float(got), want)
        # bf16 inputs: only the input/output rounding (~0.04 here) remains, at any position.
        qb, kb = jnp.asarray(q, jnp.bfloat16), jnp.asarray(k, jnp.bfloat16)
        near, far = (
            _score(scheme, qb, kb, distance, 0),
            _score(scheme, qb, kb, 100_000 + distance, 100_000),
        )
        assert abs(float(near) - want) < 0.1 and abs(float(far) - want) < 0.1

    # The same check with bf16 angles fails by orders of magnitude: the test can fail.
    def bf16_angle_score(m, n):
        inv = jnp.asarray(freqs.inv_freq, jnp.bfloat16)

        def rot(x, p):
            angle = (jnp.bfloat16(p) * inv).astype(jnp.float32)
            x0, x1 = x[:64], x[64:]
            return jnp.concatenate(
                [
                    x0 * jnp.cos(angle) - x1 * jnp.sin(angle),
                    x1 * jnp.cos(angle) + x0 * jnp.sin(angle),
                ]
            )

        return float(jnp.sum(rot(q[0, 0, 0], m) * rot(k[0, 0, 0], n)))

    assert abs(bf16_angle_score(100_100, 100_000) - _oracle_score(q, k, 100, freqs.inv_freq)) > 1.0


def test_scheme_rotate_applies_attention_factor_to_q_and_k():
    scaling = dict(rope_type="yarn", factor=8.0, original_max_position_embeddings=64)
    scheme = RoPE(head_dim=16, layout="interleaved", rope_scaling=scaling)
    q, k = _x((1, 3, 4, 16)), _x((1, 5, 2, 16), 1)
    q_pos, k_pos = np.array([[4, 5, 6]], np.int32), np.arange(5, dtype=np.int32)[None]
    qr, kr = scheme.rotate(q, k, q_pos, k_pos)
    freqs = scheme.frequencies()
    assert freqs.attention_factor == pytest.approx(1.207944, rel=1e-6)
    np.testing.assert_allclose(
        qr,
        oracle_rope(q, q_pos, freqs.inv_freq, "interleaved", freqs.attention_factor),
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        kr,
        oracle_rope(k, k_pos, freqs.inv_freq, "interleaved", freqs.attention_factor),
        rtol=1e-5,
        atol=1e-5,
    )


def test_scheme_dynamic_reads_the_length_from_key_positions_under_jit():
    scaling = dict(rope_type="dynamic", factor=2.0, original_max_position_embeddings=8)
    scheme = RoPE(head_dim=8, rope_scaling=scaling)
    q = _x((1, 4, 1, 8))
    for last in (7, 31):
        pos = jnp.array([[0, 1, 2, last]], jnp.int32)
        qr, _ = jax.jit(scheme.rotate)(q, q, pos, pos)
        freqs = rope_frequencies(8, 1e4, scaling, seq_len=last + 1)
        np.testing.assert_allclose(
            qr, oracle_rope(q, pos, freqs.inv_freq, "half"), rtol=1e-5, atol=1e-5
        )


def test_scheme_is_hashable_and_validates():
    a = RoPE(head_dim=16, rope_scaling={"rope_type": "linear", "factor": 2.0})
    b = RoPE(head_dim=16, rope_scaling=(("factor", 2.0), ("rope_type", "linear")))
    assert a == b and hash(a) == hash(b)
    with pytest.raises(ValueError, match="layout = 'neox'; allowed: half, interleaved"):
        RoPE(head_dim=16, layout="neox")
    with pytest.raises(ValueError, match=r"rope_scaling\.factor is required"):
        RoPE(head_dim=16, rope_scaling={"rope_type": "ntk"})
    with pytest.raises(ValueError, match=r"need x \[B,T,N,H\] and positions \[B,T\]"):
        apply_rope(_x((2, 3, 16)), np.zeros((2, 3), np.int32), a.frequencies())


def test_score_bound_reference_values():
    got = rope_score_bound([0, 1, 100, 1000, 4096, 10000], 1e4, 128)
    np.testing.assert_allclose(
        got, [64, 62.093684, 30.543455, 10.177728, -3.382614, -1.785202], rtol=1e-6
    )
    # Robust checks of the paper's table: the table bases keep B > 0 by a margin.
    assert rope_score_bound(np.arange(1001), 4300, 128).min() == pytest.approx(0.401, abs=1e-3)
    assert rope_score_bound(np.arange(8193), 8.4e4, 128).min() == pytest.approx(0.919, abs=1e-3)


def test_min_base_reproduces_the_robust_1k_entry():
    got = min_base(1024, 128)
    assert got == pytest.approx(4.3e3, rel=0.01)
    assert rope_score_bound(np.arange(1025), got, 128).min() >= 0
    assert rope_score_bound(np.arange(1025), got * 0.999, 128).min() < 0


@pytest.mark.slow
def test_min_base_reproduces_the_robust_8k_entry():
    assert min_base(8192, 128) == pytest.approx(8.4e4, rel=0.01)


def test_min_base_rejects_bad_input():
    with pytest.raises(ValueError, match="even head_dim"):
        min_base(1024, 7)
