"""Hugging Face checkpoints <-> lcm: ``load``, ``save`` and the checkpoint's tokenizer.

Supported families (``config.json`` ``model_type``), all pre-norm RMSNorm + SwiGLU decoders
with Hugging Face's ``rotate_half`` RoPE, i.e. lcm's ``layout = "half"`` (the weights are kept
as stored; no q/k channel permutation is needed or done):

- ``llama`` (Touvron et al. 2023): GQA, ``rope_scaling`` of any Hugging Face type.
- ``mistral`` (Jiang et al. 2023, arXiv:2310.06825): plus a uniform ``sliding_window``.
- ``qwen2`` (Qwen team 2024, arXiv:2407.10671): plus q/k/v projection biases and per-layer
  ``layer_types`` (``sliding_attention`` / ``full_attention``).
- ``phi3`` (Abdin et al. 2024, arXiv:2404.14219): fused ``qkv_proj`` / ``gate_up_proj``,
  ``partial_rotary_factor`` and LongRoPE (Ding et al. 2024, arXiv:2402.13753).

Cohere2 is refused: it needs LayerNorm, a parallel attention+MLP block, a logit scale and
interleaved RoPE, which lcm's model does not have. Any other architecture, any config key lcm
does not read, or a value lcm cannot reproduce (``attention_bias`` on Llama, a non-SiLU MLP,
per-layer ``rope_parameters``, ...) raises ``ValueError`` naming every problem: a loaded model
is the checkpoint's model or nothing.

Mapping notes: Hugging Face's ``sliding_window = W`` lets a query see ``W`` keys including
itself, lcm's ``window`` is the largest visible distance, so ``window = W - 1``. lcm has no
``max_position_embeddings``; the Hugging Face fallbacks to it are resolved here into explicit
``rope_scaling`` keys (``original_max_position_embeddings``, LongRoPE's ``factor``; ``dynamic``
uses ``max_position_embeddings`` as its reference length). Weights are read with
``safetensors`` (no torch) and returned as float32 numpy arrays (``config.model.param_dtype``).
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from lcm.config import base_config
from lcm.data import tokenizers
from lcm.model.spec import build_spec
from lcm.positional.rope_scaling import SCALING_KEYS
from lcm.positional.schedule import layer_specs

FAMILIES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "phi3": "Phi3ForCausalLM",
}
_REFUSED = {
    "cohere2": "Cohere2 needs LayerNorm, parallel attention+MLP blocks, a logit scale and "
    "interleaved RoPE, which lcm's model does not implement",
    "cohere": "Cohere needs LayerNorm, parallel attention+MLP blocks and a logit scale",
}
_NORM_EPS = {"llama": 1e-6, "mistral": 1e-6, "qwen2": 1e-6, "phi3": 1e-5}  # HF defaults
# Keys read below (values checked there), per family.
_MAPPED = {
    "model_type", "architectures", "vocab_size", "hidden_size", "intermediate_size",
    "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
    "rms_norm_eps", "tie_word_embeddings", "max_position_embeddings", "rope_theta",
    "rope_scaling", "rope_parameters", "partial_rotary_factor", "layer_types",
}  # fmt: skip
_FAMILY_KEYS = {
    "llama": {"attention_bias", "mlp_bias", "pretraining_tp"},
    "mistral": {"sliding_window"},
    "qwen2": {"sliding_window", "use_sliding_window", "max_window_layers"},
    "phi3": {"sliding_window", "original_max_position_embeddings"},
}
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
        if family == "qwen2":
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
            problems.append(f"{key} = True (Llama biases incl. o_proj/MLP are not in lcm)")
    base, partial, scaling = _rope(hf, family, problems)
    if partial != 1.0 and family != "phi3":
        problems.append(f"partial_rotary_factor {partial} (only phi3 rotates part of a head)")
    windows = _layer_types(hf, family, problems)
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
    m.norm_eps = float(hf.get("rms_norm_eps", _NORM_EPS[family]))
    p = m.positional
    p.name, p.layout, p.base, p.partial_rotary_factor = "rope", "half", base, partial
    for key, value in scaling.items():
        p.rope_scaling[key] = value
    if len(set(windows)) == 1 and windows[0] is not None:
        m.attention.mask, m.attention.window = "sliding_window", windows[0] - 1
    elif len(set(windows)) > 1:
        p.schedule = "explicit"
        p.layers = tuple("rope:causal" if w is None else f"rope:sliding_window:{w - 1}"
                         for w in windows)  # fmt: skip
    return config


def _read_tensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    """Every tensor of the directory's ``*.safetensors`` files as float32 numpy."""
    from safetensors import safe_open  # lazy: only checkpoint users need safetensors

    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors = {}
    for name in files:
        if not (path / name).is_file():
            raise ValueError(f"hf path {str(path)!r}: missing weights file {name}")
        # flax framework: numpy has no bfloat16, jax does.
        with safe_open(path / name, framework="flax") as f:
            for key in f.keys():
                tensors[key] = np.asarray(f.get_tensor(key), np.float32)
    return tensors


def _layer_to_lcm(t: dict, pre: str, m, fused: bool) -> dict:
    """One decoder layer's HF tensors (popped from ``t``) -> lcm block params."""
    d, n, k, h = m.d_model, m.num_heads, m.num_kv_heads, m.head_dim
    if fused:
        wq, wk, wv = np.split(t.pop(pre + "self_attn.qkv_proj.weight"), [n * h, (n + k) * h])
        gate, up = np.split(t.pop(pre + "mlp.gate_up_proj.weight"), 2)
    else:
        wq, wk, wv = (t.pop(f"{pre}self_attn.{x}_proj.weight") for x in "qkv")
        gate, up = t.pop(pre + "mlp.gate_proj.weight"), t.pop(pre + "mlp.up_proj.weight")
    attn = {
        "wq": wq.T.reshape(d, n, h),
        "wk": wk.T.reshape(d, k, h),
        "wv": wv.T.reshape(d, k, h),
        "wo": t.pop(pre + "self_attn.o_proj.weight").T.reshape(n, h, d),
    }
    if m.qkv_bias:
        for x, heads in (("q", n), ("k", k), ("v", k)):
            attn[f"b{x}"] = t.pop(f"{pre}self_attn.{x}_proj.bias").reshape(heads, h)
    return {
        "attn_norm": {"scale": t.pop(pre + "input_layernorm.weight")},
        "attn": attn,
        "mlp_norm": {"scale": t.pop(pre + "post_attention_layernorm.weight")},
        "mlp": {
            "wi_gate": gate.T,
            "wi_up": up.T,
            "wo": t.pop(pre + "mlp.down_proj.weight").T,
        },
    }


def _period(config) -> int:
    """Layers per scanned group (the schedule's period, as the model groups them)."""
    return len(build_spec(config).period_layers)


def _stack_layers(blocks: list[dict], config) -> dict:
    """Per-layer block params -> lcm's ``layers`` (scanned) or ``layers_{r}`` tree."""
    import jax

    p = _period(config)
    groups = [{f"block{i}": blocks[r * p + i] for i in range(p)} for r in range(len(blocks) // p)]
    if config.model.scan_layers:
        return {"layers": jax.tree.map(lambda *xs: np.stack(xs), *groups)}
    return {f"layers_{r}": g for r, g in enumerate(groups)}


def _unstack_layers(params: dict, config) -> list[dict]:
    import jax

    p, n = _period(config), config.model.num_layers
    if config.model.scan_layers:
        groups = [
            jax.tree.map(lambda x, r=r: np.asarray(x[r]), params["layers"]) for r in range(n // p)
        ]
    else:
        groups = [params[f"layers_{r}"] for r in range(n // p)]
    return [groups[i // p][f"block{i % p}"] for i in range(n)]


def load(path: str | pathlib.Path) -> tuple[ConfigDict, dict]:
    """Loads a Hugging Face model directory as ``(lcm config, params)``.

    The config is ``configs/base.py`` with the model fields mapped (and ``data.tokenizer`` set
    to the directory's ``tokenizer.json`` when present); params is the ``Transformer`` param
    tree of float32 numpy arrays.

    Raises:
      ValueError: unsupported family/key/value, or tensors missing or left over.
    """
    path = pathlib.Path(path)
    config = config_from_hf(read_config(path))
    config.model.hf_path = str(path)
    if (path / "tokenizer.json").is_file():
        config.data.tokenizer = str(path / "tokenizer.json")
    m = config.model
    tensors = {k: v for k, v in _read_tensors(path).items() if "rotary_emb.inv_freq" not in k}
    try:
        fused = read_config(path)["model_type"] == "phi3"
        blocks = [
            _layer_to_lcm(tensors, f"model.layers.{i}.", m, fused) for i in range(m.num_layers)
        ]
        params = {
            "embed": {"embedding": tensors.pop("model.embed_tokens.weight")},
            "final_norm": {"scale": tensors.pop("model.norm.weight")},
            **_stack_layers(blocks, config),
        }
        if m.tie_embeddings:
            tensors.pop("lm_head.weight", None)  # some tied checkpoints store the copy
        else:
            params["unembed"] = tensors.pop("lm_head.weight").T
    except KeyError as e:
        raise ValueError(f"hf path {str(path)!r}: missing tensor {e.args[0]}") from None
    if tensors:
        raise ValueError(f"hf path {str(path)!r}: tensors lcm does not use: {sorted(tensors)}")
    return config, params


def load_tokenizer(path: str | pathlib.Path) -> tokenizers.Tokenizer:
    """The directory's ``tokenizer.json`` through ``tokenizers`` (lcm.data.tokenizers)."""
    return tokenizers.load_tokenizer(str(pathlib.Path(path) / "tokenizer.json"))


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


def _family(config) -> str:
    """The HF family that represents ``config``: qwen2 (biases or mixed windows), phi3
    (partial rotary), mistral (one sliding window), else llama."""
    windows = {layer.window if layer.mask == "sliding_window" else None
               for layer in layer_specs(config.model)}  # fmt: skip
    if config.model.qkv_bias or len(windows) > 1:
        return "qwen2"
    if config.model.positional.partial_rotary_factor != 1.0:
        return "phi3"
    return "mistral" if windows != {None} else "llama"


def hf_config(config, model_type: str | None = None) -> dict[str, Any]:
    """The Hugging Face ``config.json`` dict of an lcm config (inverse of ``config_from_hf``).

    Raises:
      ValueError: the model has something no supported family has (listed).
    """
    m, family = config.model, model_type or _family(config)
    if family not in FAMILIES:
        raise ValueError(f"model_type {family!r}; allowed: {', '.join(FAMILIES)}")
    layers = layer_specs(m)
    problems = []
    if {layer.positional for layer in layers} != {"rope"} or m.positional.layout != "half":
        problems.append("every layer must use positional 'rope' with layout 'half'")
    if any(layer.mask not in ("causal", "sliding_window") or layer.sink for layer in layers):
        problems.append("masks must be causal or sliding_window without sinks")
    if m.qk_norm:
        problems.append("qk_norm has no equivalent in llama/mistral/qwen2/phi3")
    if m.tie_embeddings and m.scale_tied_logits:
        problems.append("scale_tied_logits (logits / sqrt(d_model)) has no HF equivalent")
    if m.qkv_bias and family != "qwen2":
        problems.append(f"qkv_bias needs model_type 'qwen2', not {family!r}")
    if m.positional.partial_rotary_factor != 1.0 and family != "phi3":
        problems.append(f"partial_rotary_factor needs model_type 'phi3', not {family!r}")
    windows = [layer.window + 1 if layer.mask == "sliding_window" else None for layer in layers]
    if len(set(windows)) > 1 and family != "qwen2":
        problems.append(f"per-layer sliding windows need model_type 'qwen2', not {family!r}")
    if windows[0] is not None and family == "llama":
        problems.append("sliding windows need model_type mistral, qwen2 or phi3, not 'llama'")
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
        "rms_norm_eps": m.norm_eps,
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
    if family == "qwen2":
        sliding = next((w for w in windows if w is not None), None)
        hf.update(use_sliding_window=sliding is not None, sliding_window=sliding,
                  layer_types=["full_attention" if w is None else "sliding_attention"
                               for w in windows])  # fmt: skip
    elif family != "llama":
        hf["sliding_window"] = windows[0]
    return hf


def save(params: dict, config, path: str | pathlib.Path, *, model_type: str | None = None):
    """Writes ``params`` of ``config`` as a Hugging Face model directory (config.json +
    model.safetensors, float32), loadable by ``transformers`` and by ``load``.

    ``model_type`` defaults to the simplest family that holds the model (see ``_family``).
    """
    from safetensors.numpy import save_file  # lazy: only checkpoint users need safetensors

    hf = hf_config(config, model_type)
    m, family = config.model, hf["model_type"]
    d, n, k, h = m.d_model, m.num_heads, m.num_kv_heads, m.head_dim
    f32 = lambda x: np.ascontiguousarray(np.asarray(x, np.float32))  # noqa: E731
    t = {"model.embed_tokens.weight": f32(params["embed"]["embedding"])}
    t["model.norm.weight"] = f32(params["final_norm"]["scale"])
    if not m.tie_embeddings:
        t["lm_head.weight"] = f32(np.asarray(params["unembed"]).T)
    for i, block in enumerate(_unstack_layers(params, config)):
        pre, a, mlp = f"model.layers.{i}.", block["attn"], block["mlp"]
        wq = np.asarray(a["wq"]).reshape(d, n * h).T
        wk = np.asarray(a["wk"]).reshape(d, k * h).T
        wv = np.asarray(a["wv"]).reshape(d, k * h).T
        if family == "phi3":
            t[pre + "self_attn.qkv_proj.weight"] = f32(np.concatenate([wq, wk, wv]))
            gate_up = np.concatenate([np.asarray(mlp["wi_gate"]).T, np.asarray(mlp["wi_up"]).T])
            t[pre + "mlp.gate_up_proj.weight"] = f32(gate_up)
        else:
            for x, w in zip("qkv", (wq, wk, wv), strict=True):
                t[f"{pre}self_attn.{x}_proj.weight"] = f32(w)
                if family == "qwen2":
                    bias = a.get(f"b{x}", np.zeros(w.shape[0], np.float32))
                    t[f"{pre}self_attn.{x}_proj.bias"] = f32(np.asarray(bias).reshape(-1))
            t[pre + "mlp.gate_proj.weight"] = f32(np.asarray(mlp["wi_gate"]).T)
            t[pre + "mlp.up_proj.weight"] = f32(np.asarray(mlp["wi_up"]).T)
        t[pre + "self_attn.o_proj.weight"] = f32(np.asarray(a["wo"]).reshape(n * h, d).T)
        t[pre + "mlp.down_proj.weight"] = f32(np.asarray(mlp["wo"]).T)
        t[pre + "input_layernorm.weight"] = f32(block["attn_norm"]["scale"])
        t[pre + "post_attention_layernorm.weight"] = f32(block["mlp_norm"]["scale"])
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    save_file(t, str(path / "model.safetensors"), metadata={"format": "pt"})


# Fields a checkpoint's weights fix: a config that sets them differently cannot use the weights.
_ARCHITECTURE = (
    "vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
    "tie_embeddings", "qkv_bias", "qk_norm",
)  # fmt: skip


def _flat(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, ConfigDict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def _set(node, key: str, value) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value


def with_checkpoint(config) -> tuple[ConfigDict, dict]:
    """``config`` with the model of ``config.model.hf_path``, and that checkpoint's params.

    Every ``config.model`` field (and ``data.tokenizer``) left at its ``configs/base.py``
    default takes the checkpoint's value; fields the config sets differently are kept, so
    ``--config.model.hf_path=DIR --config.model.positional.rope_scaling.rope_type=yarn ...``
    runs the checkpoint with another positional scheme or attention implementation.

    Raises:
      ValueError: ``hf_path`` unset, or an architecture field set to a value the weights
        cannot have (listed).
    """
    if config.model.hf_path is None:
        raise ValueError("config.model.hf_path is None: no checkpoint to load")
    loaded, params = load(config.model.hf_path)
    base = dict(_flat(base_config().model))
    merged = config.copy_and_resolve_references()
    with merged.unlocked():
        clashes = []
        for key, value in _flat(config.model):
            theirs = dict(_flat(loaded.model))[key]
            if value == base[key] or key == "hf_path":
                _set(merged.model, key, theirs)
            elif key in _ARCHITECTURE and value != theirs:
                clashes.append(f"config.model.{key} = {value!r} (checkpoint: {theirs!r})")
        if clashes:
            raise ValueError("config.model differs from the checkpoint: " + "; ".join(clashes))
        if config.data.tokenizer == "byte":
            merged.data.tokenizer = loaded.data.tokenizer
    return merged, params
