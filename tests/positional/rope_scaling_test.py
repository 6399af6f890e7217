"""RoPE frequency variants against the reference vectors of shared/reference/positional.md.

The Hugging Face unit-test values (``tests/utils/test_modeling_rope_utils.py``) and the brief's
recomputed float64 numbers are the oracles; closed forms cover the rest (factor-1 reductions,
NTK's exact lowest pair, LongRoPE's attention factor, Resonance's integer wavelengths).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcm.positional.rope_scaling import ROPE_TYPES, rope_frequencies

RTOL = 2e-6  # float32 rounding of float64 values


def inv(head_dim=128, base=1e4, **scaling):
    return rope_frequencies(head_dim, base, scaling or None).inv_freq


def test_default_matches_reference_vectors():
    theta = inv()
    assert theta.dtype == np.float32 and theta.shape == (64,)
    np.testing.assert_allclose(theta[[0, 1, 32, 63]], [1, 0.8659643, 0.01, 1.154782e-4], rtol=RTOL)
    np.testing.assert_allclose(theta[2], 7.4989e-01, rtol=2e-5)  # HF test's third value
    np.testing.assert_allclose(2 * math.pi / theta[63], 54410.1, rtol=2e-6)
    theta = inv(base=5e5)
    np.testing.assert_allclose(theta[[1, 32, 63]], [0.8146172, 1.414214e-3, 2.455141e-6], rtol=RTOL)
    np.testing.assert_allclose(2 * math.pi / theta[63], 2.5592e6, rtol=2e-5)


@pytest.mark.parametrize("factor", [2.0, 10.0, 20.0])
def test_linear_is_default_over_factor(factor):
    np.testing.assert_allclose(inv(rope_type="linear", factor=factor), inv() / factor, rtol=RTOL)


def test_linear_reference_vector():
    np.testing.assert_allclose(inv(rope_type="linear", factor=4.0)[1], 0.2164911, rtol=RTOL)


def test_ntk_base_change():
    # b' = b s^(d/(d-2)): 20221.3, 40889.9, 82684.6 for s = 2, 4, 8; θ_0 unchanged; θ_63 / s.
    for factor, new_base in ((2, 20221.3), (4, 40889.9), (8, 82684.6)):
        np.testing.assert_allclose(
            inv(rope_type="ntk", factor=factor), inv(base=new_base), rtol=5e-6
        )
    theta = inv(rope_type="ntk", factor=8)
    np.testing.assert_allclose(theta[[0, 1, 63]], [1.0, 0.837848, 1.443477e-5], rtol=RTOL)
    np.testing.assert_allclose(theta[63], inv()[63] / 8, rtol=RTOL)


def test_dynamic_reference_vectors():
    scaling = dict(rope_type="dynamic", factor=10.0, original_max_position_embeddings=2048)
    theta = rope_frequencies(128, 1e4, scaling, seq_len=16384).inv_freq
    np.testing.assert_allclose(theta[[1, 2, 63]], [0.80931, 0.65498, 1.6265e-6], rtol=5e-5)
    scaling = dict(rope_type="dynamic", factor=2.0, original_max_position_embeddings=4096)
    at_length = rope_frequencies(128, 1e4, scaling, seq_len=4096).inv_freq
    np.testing.assert_allclose(at_length, inv(), rtol=RTOL)  # ℓ ≤ L: exactly plain RoPE
    np.testing.assert_allclose(rope_frequencies(128, 1e4, scaling).inv_freq, inv(), rtol=RTOL)
    longer = rope_frequencies(128, 1e4, scaling, seq_len=8192).inv_freq
    np.testing.assert_allclose(longer, inv(base=30527.7), rtol=5e-6)
    np.testing.assert_allclose(longer[63], 3.84927e-5, rtol=5e-6)


def test_dynamic_traced_length_matches_static():
    scaling = dict(rope_type="dynamic", factor=2.0, original_max_position_embeddings=4096)
    traced = jax.jit(lambda n: rope_frequencies(128, 1e4, scaling, seq_len=n).inv_freq)
    for length in (100, 4096, 8192, 20000):
        static = rope_frequencies(128, 1e4, scaling, seq_len=length).inv_freq
        np.testing.assert_allclose(traced(jnp.int32(length)), static, rtol=2e-5)


def test_dynamic_reads_max_position_embeddings_like_hugging_face():
    # HF's dynamic type measures lengths against config.max_position_embeddings.
    got = rope_frequencies(
        128,
        1e4,
        {"rope_type": "dynamic", "factor": 2.0},
        seq_len=8192,
        max_position_embeddings=4096,
    )
    np.testing.assert_allclose(got.inv_freq, inv(base=30527.7), rtol=5e-6)


def test_yarn_hugging_face_vector():
    f = rope_frequencies(
        128, 1e4, dict(rope_type="yarn", factor=10.0, original_max_position_embeddings=2048)
    )
    np.testing.assert_allclose(
        f.inv_freq[[16, 17, 18, 40, 41]],
        [0.1, 8.3479e-2, 6.9590e-2, 4.3007e-4, 2.7384e-4],
        rtol=5e-5,
    )
    np.testing.assert_allclose(f.attention_factor, 1.230259, rtol=1e-6)
    # Ramp bounds are 16 and 41: θ untouched through pair 16, θ/s from pair 41 on.
    np.testing.assert_allclose(f.inv_freq[:17], inv()[:17], rtol=RTOL)
    np.testing.assert_allclose(f.inv_freq[41:], inv()[41:] / 10, rtol=RTOL)


def test_yarn_brief_case_truncate_and_mscale():
    scaling = dict(rope_type="yarn", factor=8.0, original_max_position_embeddings=4096)
    f = rope_frequencies(128, 1e4, scaling)
    np.testing.assert_allclose(
        f.inv_freq[[0, 20, 30, 40, 63]],
        [1.0, 0.05623413, 8.847402e-3, 1.033822e-3, 1.443477e-5],
        rtol=RTOL,
    )
    assert f.attention_factor == pytest.approx(1.207944, rel=1e-6)  # 0.1 ln 8 + 1
    assert f.attention_factor**2 == pytest.approx(1.459129, rel=1e-6)
    untruncated = rope_frequencies(128, 1e4, {**scaling, "truncate": False})
    np.testing.assert_allclose(untruncated.inv_freq[30], 8.947669e-3, rtol=RTOL)
    # HF treats beta 0 like unset (`or 32`), and an explicit attention_factor wins.
    zeros = rope_frequencies(128, 1e4, {**scaling, "beta_fast": 0, "beta_slow": 0})
    np.testing.assert_array_equal(zeros.inv_freq, f.inv_freq)
    given = rope_frequencies(128, 1e4, {**scaling, "attention_factor": 0.5, "mscale": 2.0})
    assert given.attention_factor == 0.5


def test_yarn_deepseek_mscale():
    scaling = dict(rope_type="yarn", factor=40.0, original_max_position_embeddings=4096)
    f = rope_frequencies(64, 1e4, {**scaling, "mscale": 1.0, "mscale_all_dim": 1.0})
    np.testing.assert_allclose(f.inv_freq[[20, 31]], [7.905694e-4, 3.333804e-6], rtol=RTOL)
    assert f.attention_factor == 1.0
    np.testing.assert_allclose(f.inv_freq[:10], inv(64)[:10], rtol=RTOL)  # low = 10
    np.testing.assert_allclose(f.inv_freq[23:], inv(64)[23:] / 40, rtol=RTOL)  # high = 23
    # mscale alone is ignored (HF needs both); the ratio form otherwise.
    only = rope_frequencies(64, 1e4, {**scaling, "mscale": 0.707})
    assert only.attention_factor == pytest.approx(0.1 * math.log(40) + 1)
    ratio = rope_frequencies(64, 1e4, {**scaling, "mscale": 1.0, "mscale_all_dim": 0.5})
    expected = (0.1 * math.log(40) + 1) / (0.05 * math.log(40) + 1)
    assert ratio.attention_factor == pytest.approx(expected)


def test_yarn_factor_from_lengths_when_absent():
    f = rope_frequencies(
        64,
        1e4,
        {"rope_type": "yarn", "original_max_position_embeddings": 4096},
        max_position_embeddings=163840,
    )
    ref = rope_frequencies(
        64, 1e4, {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096}
    )
    np.testing.assert_array_equal(f.inv_freq, ref.inv_freq)


def test_llama3_reference_vectors():
    hf = dict(rope_type="llama3", factor=10.0, original_max_position_embeddings=2048)
    theta = inv(**hf, low_freq_factor=1.0, high_freq_factor=4.0)
    np.testing.assert_allclose(
        theta[[30, 31, 32, 33, 40, 41]],
        [1.3335e-2, 1.0730e-2, 7.7785e-3, 5.6009e-3, 3.4539e-4, 2.7384e-4],
        rtol=5e-5,
    )
    llama31 = dict(rope_type="llama3", factor=8.0, original_max_position_embeddings=8192)
    theta = inv(base=5e5, **llama31, low_freq_factor=1.0, high_freq_factor=4.0)
    plain = inv(base=5e5)
    np.testing.assert_allclose(
        theta[[20, 25, 30, 63]], [1.656044e-2, 5.94073e-3, 1.371894e-3, 3.068926e-7], rtol=RTOL
    )
    np.testing.assert_array_equal(theta[:29], plain[:29])  # pairs 0-28 unchanged
    np.testing.assert_allclose(theta[35:], plain[35:] / 8, rtol=RTOL)  # 35-63 divided
    assert np.all(theta[29:35] < plain[29:35]) and np.all(theta[29:35] > plain[29:35] / 8)
    # Llama-3.2 1B/3B: head_dim 64, s = 32: pairs 0-14 unchanged, >= 18 divided by 32.
    llama32 = dict(rope_type="llama3", factor=32.0, original_max_position_embeddings=8192)
    theta = inv(64, 5e5, **llama32, low_freq_factor=1.0, high_freq_factor=4.0)
    np.testing.assert_array_equal(theta[:15], inv(64, 5e5)[:15])
    np.testing.assert_allclose(theta[18:], inv(64, 5e5)[18:] / 32, rtol=RTOL)


def test_longrope_phi35_vectors_and_short_long_choice():
    pairs = 48  # Phi-3.5-mini: head_dim 96
    long = np.linspace(1.0, 64.0, pairs)
    long[[0, 24, 47]] = [1.08, 0.01 / 1.986492e-4, 64.84]
    short = np.ones(pairs)
    short[47] = 1e4 ** (-94 / 96) / 4.265943e-5
    scaling = dict(
        rope_type="longrope",
        factor=32.0,
        original_max_position_embeddings=4096,
        short_factor=list(short),
        long_factor=list(long),
    )
    at_init = rope_frequencies(96, 1e4, scaling)
    assert at_init.attention_factor == pytest.approx(1.190238, rel=1e-6)
    np.testing.assert_allclose(at_init.inv_freq[47], 4.265943e-5, rtol=RTOL)  # short
    for seq_len in (None, 100, 4096):
        got = rope_frequencies(96, 1e4, scaling, seq_len=seq_len).inv_freq
        np.testing.assert_array_equal(got, at_init.inv_freq)
    long_f = rope_frequencies(96, 1e4, scaling, seq_len=4097)
    np.testing.assert_allclose(
        long_f.inv_freq[[0, 24, 47]], [0.9259259, 1.986492e-4, 1.868488e-6], rtol=RTOL
    )
    traced = jax.jit(lambda n: rope_frequencies(96, 1e4, scaling, seq_len=n).inv_freq)
    np.testing.assert_allclose(traced(jnp.int32(4097)), long_f.inv_freq, rtol=RTOL)
    np.testing.assert_allclose(traced(jnp.int32(4096)), at_init.inv_freq, rtol=RTOL)
    # factor from the two lengths when absent (Phi-3 configs); factor <= 1 gives 1.
    derived = {k: v for k, v in scaling.items() if k != "factor"}
    got = rope_frequencies(96, 1e4, derived, max_position_embeddings=131072)
    assert got.attention_factor == at_init.attention_factor
    assert rope_frequencies(96, 1e4, {**scaling, "factor": 1.0}).attention_factor == 1.0


def test_resonance_rounds_wavelengths():
    f = rope_frequencies(128, 1e4, {"rope_type": "resonance"})
    np.testing.assert_allclose(
        f.inv_freq[[0, 1, 2, 10, 20, 63]],
        [1.047198, 0.8975979, 0.7853982, 0.241661, 0.05609987, 1.154785e-4],
        rtol=RTOL,
    )
    np.testing.assert_array_equal(f.wavelengths[[0, 1, 2, 10, 20]], [6, 7, 8, 26, 112])
    assert (f.wavelengths < 4096).sum() == 46 and (f.wavelengths < 2048).sum() == 41
    np.testing.assert_allclose(2 * np.pi / f.inv_freq, f.wavelengths, rtol=RTOL)


def test_resonance_yarn_rounds_after_yarn():
    scaling = dict(factor=8.0, original_max_position_embeddings=4096)
    yarn = rope_frequencies(128, 1e4, {"rope_type": "yarn", **scaling})
    both = rope_frequencies(128, 1e4, {"rope_type": "resonance_yarn", **scaling})
    np.testing.assert_array_equal(both.wavelengths, np.round(2 * np.pi / yarn.inv_freq))
    np.testing.assert_allclose(both.inv_freq, 2 * np.pi / both.wavelengths, rtol=RTOL)
    assert both.attention_factor == yarn.attention_factor


FACTOR_ONE = {
    "linear": {},
    "ntk": {},
    "dynamic": {"original_max_position_embeddings": 2048},
    "yarn": {"original_max_position_embeddings": 2048},
    "llama3": {
        "original_max_position_embeddings": 2048,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
    },
    "longrope": {
        "original_max_position_embeddings": 2048,
        "short_factor": [1.0] * 32,
        "long_factor": [1.0] * 32,
    },
}


@pytest.mark.parametrize("rope_type", sorted(FACTOR_ONE))
def test_factor_one_reduces_to_plain_rope(rope_type):
    scaling = {"rope_type": rope_type, "factor": 1.0, **FACTOR_ONE[rope_type]}
    # Dynamic NTK reduces only up to the original length: beyond it, even at factor 1, HF's
    # bracket (s·ℓ/L − (s − 1)) is ℓ/L > 1 (checked below).
    seq_len = 2048 if rope_type == "dynamic" else 8192
    f = rope_frequencies(64, 1e4, scaling, seq_len=seq_len)
    np.testing.assert_allclose(f.inv_freq, inv(64), rtol=RTOL)
    assert f.attention_factor == 1.0


def test_dynamic_at_factor_one_still_grows_the_base_beyond_the_original_length():
    scaling = {"rope_type": "dynamic", "factor": 1.0, "original_max_position_embeddings": 2048}
    got = rope_frequencies(64, 1e4, scaling, seq_len=8192).inv_freq
    np.testing.assert_allclose(got, inv(64, 1e4 * 4 ** (64 / 62)), rtol=RTOL)


def test_partial_rotary_uses_rotary_dim():
    f = rope_frequencies(128, 1e4, None, partial_rotary_factor=0.25)
    np.testing.assert_allclose(f.inv_freq, inv(32), rtol=RTOL)
    yarn = dict(rope_type="yarn", factor=8.0, original_max_position_embeddings=4096)
    np.testing.assert_array_equal(
        rope_frequencies(128, 1e4, yarn, partial_rotary_factor=0.5).inv_freq,
        rope_frequencies(64, 1e4, yarn).inv_freq,
    )


def test_every_type_is_covered_and_legacy_type_key():
    assert set(ROPE_TYPES) == {
        "default",
        "linear",
        "ntk",
        "dynamic",
        "yarn",
        "llama3",
        "longrope",
        "resonance",
        "resonance_yarn",
    }
    legacy = rope_frequencies(64, 1e4, {"type": "linear", "factor": 2.0}).inv_freq
    np.testing.assert_allclose(legacy, inv(64) / 2, rtol=RTOL)


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((64, 1e4, {"rope_type": "ntk2"}), {}, "rope_scaling.rope_type = 'ntk2'; allowed: default"),
        ((64, 1e4, {"rope_type": "linear"}), {}, "rope_scaling.factor is required"),
        (
            (64, 1e4, {"rope_type": "linear", "factor": 2.0, "beta_fast": 3.0}),
            {},
            "rope_scaling keys ['beta_fast'] are not used by rope_type='linear'; allowed: factor",
        ),
        (
            (64, 1e4, {"rope_type": "yarn", "factor": 2.0}),
            {},
            "rope_scaling.original_max_position_embeddings is required for rope_type='yarn'",
        ),
        (
            (
                64,
                1e4,
                {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192},
            ),
            {},
            "rope_scaling.low_freq_factor is required for rope_type='llama3'",
        ),
        (
            (
                64,
                1e4,
                {
                    "rope_type": "longrope",
                    "factor": 8.0,
                    "original_max_position_embeddings": 8,
                    "short_factor": [1.0] * 31,
                    "long_factor": [1.0] * 32,
                },
            ),
            {},
            "rope_scaling.short_factor has 31 entries; needs rotary_dim/2 = 32",
        ),
        ((64, 1e4), {"partial_rotary_factor": 0.3}, "rotary dim int(head_dim"),
        ((64, -1.0), {}, "base = -1.0: must be > 0"),
    ],
)
def test_bad_input_names_key_and_allowed(args, kwargs, message):
    with pytest.raises(ValueError) as err:
        rope_frequencies(*args, **kwargs)
    assert message in str(err.value)
