"""Hugging Face ``config.json`` <-> lcm ``config.model``, both directions, with every refusal.

See ``lcm.hf`` for the families and the mapping rules.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

from ml_collections import ConfigDict

from lcm.config import base_config
from lcm.positional.rope_scaling import SCALING_KEYS
from lcm.positional.schedule import LayerSpec, layer_specs

FAMILIES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "cohere2": "Cohere2ForCausalLM",
}
_REFUSED = {
    "cohere": "Cohere (v1) is not mapped (its per-head LayerNorm QK-norm has no lcm "
    "equivalent); Cohere2 is supported",
}
_NORM_EPS = {"llama": 1e-6, "mistral": 1e-6, "qwen2": 1e-6, "phi3": 1e-5}  # HF defaults
# Keys read below (values checked there), per family.
_MAPPED = {
    "model_type", "architectures", "vocab_size", "hidden_size", "intermediate_size",
    "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
    "tie_word_embeddings", "max_position_embeddings", "rope_theta", "rope_scaling",
    "rope_parameters", "partial_rotary_factor", "layer_types",
}  # fmt: skip
_FAMILY_KEYS = {
    "llama": {"rms_norm_eps", "attention_bias", "mlp_bias", "pretraining_tp"},
    "mistral": {"rms_norm_eps", "sliding_window"},
    "qwen2": {"rms_norm_eps", "sliding_window", "use_sliding_window", "max_window_layers"},
    "phi3": {"rms_norm_eps", "sliding_window", "original_max_position_embeddings"},
    "cohere2": {"layer_norm_eps", "logit_scale", "attention_bias", "sliding_window",
                "sliding_window_pattern", "use_embedding_sharing", "cache_implementation"},
}  # fmt: skip
# Keys of the original Cohere2 release that transformers does not read. Each is accepted only
# with the behaviour transformers hard-codes (None: no effect on the forward pass; the layer
# pattern is read from layer_types / sliding_window_pattern, not layer_switch).
_COHERE2_LEGACY = {
    "order_of_interleaved_layers": "local_attn_first",
    "position_embedding_type": "rope_gptj",
    "rotary_pct": 1.0,
    "use_gated_activation": True,
    "use_parallel_block": True,
    "use_qk_norm": False,
    "use_parallel_embedding": None,
    "layer_switch": None,
}
_FAMILY_KEYS["cohere2"] |= set(_COHERE2_LEGACY)
# transformers' Cohere2Config defaults that differ from the other families' (absent = these).
_COHERE2_DEFAULTS = {
    "tie_word_embeddings": True, "sliding_window": 4096, "logit_scale": 0.0625,
    "layer_norm_eps": 1e-5,
}  # fmt: skip
# Keys with no effect on the forward pass in float32 inference or training from the weights.
_IGNORED = {
    "_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache",
    "initializer_range", "bos_token_id", "eos_token_id", "pad_token_id", "attention_dropout",
    "embd_pdrop", "resid_pdrop", "auto_map", "id2label", "label2id", "return_dict",
    "output_attentions", "output_hidden_states", "chunk_size_feed_forward", "problem_type",
    "is_encoder_decoder", "use_return_dict", "tokenizer_class", "bos_token", "eos_token",
}  # fmt: skip

_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def read_config(path: str | pathlib.Path) -> dict[str, Any]:
    """The ``config.json`` of a Hugging Face model directory."""
    file = pathlib.Path(path) / "config.json"
    if not file.is_file():
        raise ValueError(f"hf path {str(path)!r}: no config.json (need a local model directory)")
    return json.loads(file.read_text())


def _rope(hf: dict, family: str, problems: list[str]) -> tuple[float, float, dict]:
    """``(base, partial_rotary_factor, lcm rope_scaling)`` from either config format."""
    params = dict(hf.get("rope_parameters") or {})
    if params and all(isinstance(v, dict) for v in params.values()):
        problems.append("rope_parameters per layer type (nested) is not supported")
        return 10_000.0, 1.0, {"rope_type": "default"}
    if not params:  # transformers < 5: rope_theta, partial_rotary_factor and rope_scaling
        params = dict(hf.get("rope_scaling") or {})
    base = params.pop("rope_theta", hf.get("rope_theta", 10_000.0))
    partial = params.pop("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    rope_type = params.pop("rope_type", params.pop("type", "default"))
    params.pop("type", None)
    rope_type = {"su": "longrope"}.get(rope_type, rope_type)
    hf_types = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")
    if rope_type not in hf_types:
        problems.append(f"rope_type {rope_type!r} (allowed: {', '.join(hf_types)})")
        return base, partial, {"rope_type": "default"}
    unknown = sorted(set(params) - set(SCALING_KEYS[rope_type]))
    if unknown:
        problems.append(f"rope_scaling keys {unknown} for rope_type {rope_type!r}")
    scaling = {"rope_type": rope_type, **{k: v for k, v in params.items() if v is not None}}
    max_len = hf.get("max_position_embeddings")
    if rope_type == "dynamic":  # Hugging Face's reference length is max_position_embeddings
        scaling["original_max_position_embeddings"] = max_len
    elif rope_type in ("yarn", "llama3", "longrope"):
        if family == "phi3" and "original_max_position_embeddings" in hf:  # HF's priority
            scaling["original_max_position_embeddings"] = hf["original_max_position_embeddings"]
        scaling.setdefault("original_max_position_embeddings", max_len)
        if rope_type in ("yarn", "longrope") and "factor" not in scaling:
            scaling["factor"] = max_len / scaling["original_max_position_embeddings"]
    for key in ("short_factor", "long_factor"):
        if key in scaling:
            scaling[key] = tuple(float(x) for x in scaling[key])
    return float(base), float(partial), scaling


def _layer_types(hf: dict, family: str, problems: list[str]) -> list[str | None]:
    """Per layer: None (full causal) or the Hugging Face sliding window size."""
    n = hf["num_hidden_layers"]
    window = hf.get("sliding_window")
    if family == "qwen2" and not hf.get("use_sliding_window", False):
        window = None
    types = hf.get("layer_types")
    if types is None:
        if family == "cohere2":  # transformers' fallback: every pattern-th layer is global
            pattern = hf.get("sliding_window_pattern", 4)
            types = ["sliding_attention" if (i + 1) % pattern else "full_attention"
                     for i in range(n)]  # fmt: skip
        elif family == "qwen2":
            types = ["sliding_attention" if window and i >= hf.get("max_window_layers", 28)
                     else "full_attention" for i in range(n)]  # fmt: skip
        else:
            types = ["sliding_attention" if window else "full_attention"] * n
    bad = sorted(set(types) - {"sliding_attention", "full_attention"})
    if bad or len(types) != n:
        problems.append(f"layer_types {types} (need {n} of sliding_attention/full_attention)")
    if "sliding_attention" in types and not window:
        problems.append("layer_types has sliding_attention but sliding_window is unset")
    return [window if t == "sliding_attention" else None for t in types]


def _cohere2_checks(hf: dict, problems: list[str]) -> None:
    """Cohere2 values transformers' Cohere2 model cannot or does not honour."""
    for key, want in _COHERE2_LEGACY.items():
        if key in hf and want is not None and hf[key] != want:
            problems.append(f"{key} {hf[key]!r} (transformers' Cohere2 assumes {want!r})")
    tied = hf["tie_word_embeddings"]
    if hf.get("use_embedding_sharing", tied) != tied:
        problems.append(f"use_embedding_sharing {hf['use_embedding_sharing']} differs from "
                        f"tie_word_embeddings {tied}")  # fmt: skip
    head_dim = hf["hidden_size"] // hf["num_attention_heads"]
    if hf.get("head_dim", head_dim) != head_dim:  # transformers overrides head_dim
        problems.append(f"head_dim {hf['head_dim']} (Cohere2 uses hidden_size / "
                        f"num_attention_heads = {head_dim})")  # fmt: skip


def _set_schedule(m, wanted: list[LayerSpec]) -> None:
    """Sets ``m`` to the simplest schedule giving exactly ``wanted``: uniform (one scheme and
    mask), else ``rnope_swa`` (Cohere2's pattern), else explicit per-layer entries."""
    p, first = m.positional, wanted[0]
    if len(set(wanted)) == 1:
        p.name, m.attention.mask = first.positional, first.mask
        if first.window:
            m.attention.window = first.window
        return
    # rnope_swa: NoPE + causal on every nope_every-th layer, RoPE + one sliding window elsewhere.
    every = next((i + 1 for i, x in enumerate(wanted) if x.positional == "nope"), 0)
    window = max(x.window for x in wanted)
    nope, swa = LayerSpec("nope", "causal"), LayerSpec("rope", "sliding_window", window)
    if every and wanted == [swa if (i + 1) % every else nope for i in range(len(wanted))]:
        p.schedule, p.nope_every, p.swa_window = "rnope_swa", every, window
        return
    p.schedule = "explicit"
    p.layers = tuple(f"{x.positional}:{x.mask}" + (f":{x.window}" if x.window else "")
                     for x in wanted)  # fmt: skip


def config_from_hf(hf: dict[str, Any]) -> ConfigDict:
    """The lcm config (``configs/base.py`` defaults, model fields mapped) of a HF config.

    Raises:
      ValueError: unsupported architecture, config key or value (all listed at once).
    """
    family = hf.get("model_type")
    if family in _REFUSED:
        raise ValueError(f"model_type {family!r} is not supported: {_REFUSED[family]}")
    if family not in FAMILIES:
        raise ValueError(f"model_type {family!r} is not supported; allowed: {', '.join(FAMILIES)}")
    cohere = family == "cohere2"
    if cohere:
        hf = {**_COHERE2_DEFAULTS, **hf}
    problems = []
    unknown = sorted(set(hf) - _MAPPED - _FAMILY_KEYS[family] - _IGNORED)
    if unknown:
        problems.append(f"config keys lcm does not read: {unknown}")
    if hf.get("architectures") not in (None, [FAMILIES[family]]):
        problems.append(f"architectures {hf['architectures']} (allowed: [{FAMILIES[family]!r}])")
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {hf['hidden_act']!r} (allowed: 'silu')")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            problems.append(f"{key} = True (o_proj / MLP biases are not in lcm)")
    base, partial, scaling = _rope(hf, family, problems)
    if partial != 1.0 and family != "phi3":
        problems.append(f"partial_rotary_factor {partial} (only phi3 rotates part of a head)")
    windows = _layer_types(hf, family, problems)
    if cohere:
        _cohere2_checks(hf, problems)
    if problems:
        raise ValueError(f"unsupported Hugging Face {family} config: " + "; ".join(problems))

    config = base_config()
    m = config.model
    m.vocab_size = hf["vocab_size"]
    m.d_model = hf["hidden_size"]
    m.num_layers = hf["num_hidden_layers"]
    m.num_heads = hf["num_attention_heads"]
    m.num_kv_heads = hf.get("num_key_value_heads") or m.num_heads
    m.head_dim = hf.get("head_dim") or m.d_model // m.num_heads
    m.mlp_dim = hf["intermediate_size"]
    m.tie_embeddings = bool(hf.get("tie_word_embeddings", False))
    m.scale_tied_logits = False
    m.qkv_bias = family == "qwen2"
    if cohere:  # LayerNorm, parallel block, logit scale; RoPE only on sliding layers
        m.norm, m.parallel_block = "layernorm", True
        m.norm_eps, m.logit_scale = float(hf["layer_norm_eps"]), float(hf["logit_scale"])
    else:
        m.norm_eps = float(hf.get("rms_norm_eps", _NORM_EPS[family]))
    p = m.positional
    p.layout = "interleaved" if cohere else "half"
    p.base, p.partial_rotary_factor = base, partial
    for key, value in scaling.items():
        p.rope_scaling[key] = value
    # Hugging Face's sliding_window W lets a query see W keys: lcm window W - 1.
    full = LayerSpec("nope" if cohere else "rope", "causal")
    _set_schedule(
        m, [full if w is None else LayerSpec("rope", "sliding_window", w - 1) for w in windows]
    )
    return config


def _hf_rope(config) -> tuple[dict, int]:
    """``(rope fields of config.json, max_position_embeddings)`` in the transformers<5 form."""
    p, seq_len = config.model.positional, config.seq_len
    rope_type = p.rope_scaling.rope_type
    base = p.base
    if rope_type == "ntk":  # NTK-aware = default RoPE with base b * s^(d/(d-2))
        dim = int(config.model.head_dim * p.partial_rotary_factor)
        base, rope_type = base * p.rope_scaling.factor ** (dim / (dim - 2)), "default"
    if rope_type not in ("default", "linear", "dynamic", "yarn", "llama3", "longrope"):
        raise ValueError(f"rope_type {rope_type!r} has no Hugging Face equivalent")
    fields = {"rope_theta": base}
    if p.partial_rotary_factor != 1.0:
        fields["partial_rotary_factor"] = p.partial_rotary_factor
    scaling = {"rope_type": rope_type}
    for key in SCALING_KEYS[rope_type]:
        value = p.rope_scaling[key]
        if value is not None:
            scaling[key] = list(value) if isinstance(value, tuple) else value
    original = scaling.get("original_max_position_embeddings")
    max_len = seq_len
    if rope_type == "dynamic":
        max_len = scaling.pop("original_max_position_embeddings")
    elif original is not None:
        max_len = math.ceil(original * scaling.get("factor", 1.0))
    if rope_type != "default":
        fields["rope_scaling"] = scaling
    return fields, max_len


def _is_cohere(m) -> bool:
    """Whether ``config.model`` has something only Cohere2 has among the families."""
    nope = any(layer.positional == "nope" for layer in layer_specs(m))
    cohere_block = m.norm == "layernorm" or m.parallel_block or m.logit_scale != 1.0
    return cohere_block or nope or m.positional.layout == "interleaved"


def _family(config) -> str:
    """The HF family that represents ``config``: cohere2 (LayerNorm, parallel block, logit scale,
    interleaved RoPE or NoPE layers), qwen2 (biases or mixed windows), phi3 (partial rotary),
    mistral (one sliding window), else llama."""
    if _is_cohere(config.model):
        return "cohere2"
    windows = {layer.window if layer.mask == "sliding_window" else None
               for layer in layer_specs(config.model)}  # fmt: skip
    if config.model.qkv_bias or len(windows) > 1:
        return "qwen2"
    if config.model.positional.partial_rotary_factor != 1.0:
        return "phi3"
    return "mistral" if windows != {None} else "llama"


def _cohere2_problems(m, layers: tuple[LayerSpec, ...]) -> list[str]:
    """What ``config.model`` has that a Hugging Face Cohere2 model cannot hold."""
    problems = []
    if (m.norm, m.parallel_block) != ("layernorm", True):
        problems.append("Cohere2 needs norm 'layernorm' and parallel_block True")
    if m.positional.layout != "interleaved" and any(x.positional == "rope" for x in layers):
        problems.append("Cohere2 needs positional.layout 'interleaved'")
    swa = {(x.positional, x.mask, x.sink) for x in layers if x.mask != "causal"}
    full = {(x.positional, x.sink) for x in layers if x.mask == "causal"}
    windows = {x.window for x in layers if x.mask == "sliding_window"}
    if swa - {("rope", "sliding_window", 0)} or full - {("nope", 0)} or len(windows) > 1:
        problems.append("Cohere2 layers are rope:sliding_window (one window) or nope:causal")
    if m.head_dim * m.num_heads != m.d_model:
        problems.append("Cohere2 needs head_dim * num_heads == d_model")
    return problems


def _llama_like_problems(m, layers: tuple[LayerSpec, ...], family: str) -> list[str]:
    """What ``config.model`` has that a Llama / Mistral / Qwen2 / Phi-3 model cannot hold."""
    problems = []
    if {layer.positional for layer in layers} != {"rope"} or m.positional.layout != "half":
        problems.append("every layer must use positional 'rope' with layout 'half'")
    if any(layer.mask not in ("causal", "sliding_window") or layer.sink for layer in layers):
        problems.append("masks must be causal or sliding_window without sinks")
    if m.norm != "rms" or m.parallel_block or m.logit_scale != 1.0:
        problems.append("norm 'layernorm', parallel_block and logit_scale need 'cohere2'")
    windows = [layer.window + 1 if layer.mask == "sliding_window" else None for layer in layers]
    if len(set(windows)) > 1 and family != "qwen2":
        problems.append(f"per-layer sliding windows need model_type 'qwen2', not {family!r}")
    if windows[0] is not None and family == "llama":
        problems.append("sliding windows need model_type mistral, qwen2 or phi3, not 'llama'")
    return problems


def hf_config(config, model_type: str | None = None) -> dict[str, Any]:
    """The Hugging Face ``config.json`` dict of an lcm config (inverse of ``config_from_hf``).

    Raises:
      ValueError: the model has something no supported family has (listed).
    """
    m, family = config.model, model_type or _family(config)
    if family not in FAMILIES:
        raise ValueError(f"model_type {family!r}; allowed: {', '.join(FAMILIES)}")
    layers = layer_specs(m)
    if family == "cohere2":
        problems = _cohere2_problems(m, layers)
    else:
        problems = _llama_like_problems(m, layers, family)
    if m.qk_norm:
        problems.append(f"qk_norm has no equivalent in {family}")
    if m.tie_embeddings and m.scale_tied_logits:
        problems.append("scale_tied_logits (logits / sqrt(d_model)) has no HF equivalent")
    if m.qkv_bias and family != "qwen2":
        problems.append(f"qkv_bias needs model_type 'qwen2', not {family!r}")
    if m.positional.partial_rotary_factor != 1.0 and family != "phi3":
        problems.append(f"partial_rotary_factor needs model_type 'phi3', not {family!r}")
    windows = [layer.window + 1 if layer.mask == "sliding_window" else None for layer in layers]
    try:
        rope, max_len = _hf_rope(config)
    except ValueError as e:
        problems.append(str(e))
    if problems:
        raise ValueError(f"cannot save as Hugging Face {family}: " + "; ".join(problems))
    hf = {
        "model_type": family,
        "architectures": [FAMILIES[family]],
        "vocab_size": m.vocab_size,
        "hidden_size": m.d_model,
        "intermediate_size": m.mlp_dim,
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_heads,
        "num_key_value_heads": m.num_kv_heads,
        "hidden_act": "silu",
        "layer_norm_eps" if family == "cohere2" else "rms_norm_eps": m.norm_eps,
        "tie_word_embeddings": m.tie_embeddings,
        "max_position_embeddings": max_len,
        "torch_dtype": "float32",
        **rope,
        "pad_token_id": None,  # Phi-3's default (32000) would not fit every vocabulary
    }
    if m.hf_path is not None:  # token ids lcm does not track: keep the source checkpoint's
        source = read_config(m.hf_path)
        hf.update({key: source[key] for key in _TOKEN_IDS if key in source})
    if family != "phi3":  # Phi-3 has no head_dim field: hidden_size / num_attention_heads
        hf["head_dim"] = m.head_dim
    elif m.head_dim * m.num_heads != m.d_model:
        raise ValueError("cannot save as Hugging Face phi3: head_dim * num_heads != d_model")
    if family == "phi3":  # Phi-3 reads the original length at top level (default 4096)
        original = rope.get("rope_scaling", {}).get("original_max_position_embeddings")
        hf["original_max_position_embeddings"] = original or max_len
    sliding = next((w for w in windows if w is not None), None)
    layer_types = ["full_attention" if w is None else "sliding_attention" for w in windows]
    if family == "qwen2":
        hf.update(use_sliding_window=sliding is not None, sliding_window=sliding,
                  layer_types=layer_types)  # fmt: skip
    elif family == "cohere2":
        hf.update(sliding_window=sliding, layer_types=layer_types, logit_scale=m.logit_scale,
                  attention_bias=False)  # fmt: skip
    elif family != "llama":
        hf["sliding_window"] = windows[0]
    return hf
