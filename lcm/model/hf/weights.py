"""Hugging Face safetensors <-> lcm ``Transformer`` params: ``load``, ``save``, tokenizer.

Hugging Face ``nn.Linear`` weights are ``[out, in]``; lcm keeps ``[in, ...]`` with heads split
(``wq [D,N,H]``, ``wo [N,H,D]``). Phi-3 fuses ``qkv_proj`` (q, k, v rows in that order) and
``gate_up_proj`` (gate rows first). Cohere2's parallel block has one norm
(``input_layernorm`` -> ``attn_norm``) and no ``post_attention_layernorm``; its LayerNorms have
a weight and no bias. Layers are stacked into lcm's scanned groups (or ``layers_{r}`` without
scan) by the schedule's period.
"""

from __future__ import annotations

import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from lcm.data import tokenizers
from lcm.model.hf.mapping import config_from_hf, hf_config, read_config
from lcm.model.spec import build_spec
from lcm.model.transformer import Transformer


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
    block = {
        "attn_norm": {"scale": t.pop(pre + "input_layernorm.weight")},
        "attn": attn,
        "mlp": {
            "wi_gate": gate.T,
            "wi_up": up.T,
            "wo": t.pop(pre + "mlp.down_proj.weight").T,
        },
    }
    if not m.parallel_block:
        block["mlp_norm"] = {"scale": t.pop(pre + "post_attention_layernorm.weight")}
    return block


def _period(config) -> int:
    """Layers per scanned group (the schedule's period, as the model groups them)."""
    return len(build_spec(config).period_layers)


def _stack_layers(blocks: list[dict], config) -> dict:
    """Per-layer block params -> lcm's ``layers`` (scanned) or ``layers_{r}`` tree."""
    p = _period(config)
    groups = [{f"block{i}": blocks[r * p + i] for i in range(p)} for r in range(len(blocks) // p)]
    if config.model.scan_layers:
        return {"layers": jax.tree.map(lambda *xs: np.stack(xs), *groups)}
    return {f"layers_{r}": g for r, g in enumerate(groups)}


def _unstack_layers(params: dict, config) -> list[dict]:
    """Inverse of ``_stack_layers``: block params of layer 0, 1, ..."""
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
    except ValueError as e:  # a reshape or split that does not fit config.json
        raise ValueError(f"hf path {str(path)!r}: tensor shapes do not fit config.json: {e}") from e
    if tensors:
        raise ValueError(f"hf path {str(path)!r}: tensors lcm does not use: {sorted(tensors)}")
    _check_shapes(params, config, path)
    return config, params


def _check_shapes(params: dict, config, path: pathlib.Path) -> None:
    """Raises unless ``params`` has exactly the tree and shapes ``Transformer.init`` makes."""
    ones = jnp.ones((1, 1), jnp.int32)
    init = jax.eval_shape(
        lambda: Transformer(build_spec(config)).init(jax.random.key(0), ones, ones)
    )
    want = jax.tree.map(lambda x: x.shape, nn.unbox(init["params"]))
    have = jax.tree.map(np.shape, params)
    if have != want:
        raise ValueError(f"hf path {str(path)!r}: params {have} do not match the model's {want}")


def load_tokenizer(path: str | pathlib.Path) -> tokenizers.Tokenizer:
    """The directory's ``tokenizer.json`` through ``tokenizers`` (lcm.data.tokenizers)."""
    return tokenizers.load_tokenizer(str(pathlib.Path(path) / "tokenizer.json"))


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
        if not m.parallel_block:
            t[pre + "post_attention_layernorm.weight"] = f32(block["mlp_norm"]["scale"])
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    save_file(t, str(path / "model.safetensors"), metadata={"format": "pt"})
