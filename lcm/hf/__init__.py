"""Hugging Face checkpoints <-> lcm: ``load``, ``load_sharded``, ``save`` and the tokenizer.

Supported families (``config.json`` ``model_type``). The first four are pre-norm RMSNorm + SwiGLU
decoders with Hugging Face's ``rotate_half`` RoPE, i.e. lcm's ``layout = "half"``:

- ``llama`` (Touvron et al. 2023): GQA, ``rope_scaling`` of any Hugging Face type.
- ``mistral`` (Jiang et al. 2023, arXiv:2310.06825): plus a uniform ``sliding_window``.
- ``qwen2`` (Qwen team 2024, arXiv:2407.10671): plus q/k/v projection biases and per-layer
  ``layer_types`` (``sliding_attention`` / ``full_attention``).
- ``phi3`` (Abdin et al. 2024, arXiv:2404.14219): fused ``qkv_proj`` / ``gate_up_proj``,
  ``partial_rotary_factor`` and LongRoPE (Ding et al. 2024, arXiv:2402.13753).
- ``cohere2`` (Command R7B / Command A; RNoPE-style, Yang et al. 2025, arXiv:2501.18795):
  bias-free LayerNorm (``norm = "layernorm"``), one norm feeding attention and the SwiGLU MLP
  in parallel (``parallel_block``), ``logit_scale`` on the logits, tied embeddings by default,
  and interleaved (GPT-J) RoPE (``layout = "interleaved"``) on ``sliding_attention`` layers
  only; ``full_attention`` layers are NoPE with a causal mask (the ``rnope_swa`` schedule when
  the pattern is regular, else ``explicit``).

The q/k weights are kept as stored (no channel permutation): the layout names the pairing.
Cohere (v1) is refused. Any other architecture, any config key lcm does not read, or a value
lcm cannot reproduce (``attention_bias`` on Llama or Cohere2, a non-SiLU MLP, per-layer
``rope_parameters``, a legacy Cohere2 key such as ``rotary_pct`` with a value transformers
does not implement, ...) raises ``ValueError`` naming every problem: a loaded model is the
checkpoint's model or nothing.

Mapping notes: Hugging Face's ``sliding_window = W`` lets a query see ``W`` keys including
itself, lcm's ``window`` is the largest visible distance, so ``window = W - 1``. lcm has no
``max_position_embeddings``; the Hugging Face fallbacks to it are resolved here into explicit
``rope_scaling`` keys (``original_max_position_embeddings``, LongRoPE's ``factor``; ``dynamic``
uses ``max_position_embeddings`` as its reference length).

Weights (``safetensors``, no torch; one ``model.safetensors`` or several files with
``model.safetensors.index.json``):

- ``load(dir) -> (config, params)``: host float32 numpy arrays, whatever the file dtype (tests,
  small models, single-device eval and generation via ``with_checkpoint``).
- ``load_sharded(dir, config, abstract_params, shardings)``: each param built in its target
  ``NamedSharding`` with ``jax.make_array_from_callback``; a device's callback reads only the
  slices of the Hugging Face tensors its shard comes from (``get_slice(name)[index]``, through
  the transposes, head splits, stacked-layer axis and fused Phi-3 rows), in the checkpoint's
  dtype, and the cast to the param dtype happens on device. ``lcm.train`` uses it
  (``checkpoint_config`` for the config, then ``state_from_params``), so no device holds an
  unsharded copy of a sharded tensor.
- ``save(params, config, dir, *, dtype=None, max_shard_bytes=5e9)``: ``dtype`` defaults to
  ``config.model.param_dtype`` (lossless); one layer of one param is gathered to the host at a
  time (numpy or sharded, multi-host jax arrays; process 0 writes); above ``max_shard_bytes``
  the tensors go to ``model-0000i-of-0000N.safetensors`` files with Hugging Face's index.
"""

from lcm.hf.mapping import FAMILIES as FAMILIES
from lcm.hf.mapping import config_from_hf as config_from_hf
from lcm.hf.mapping import hf_config as hf_config
from lcm.hf.mapping import read_config as read_config
from lcm.hf.merge import checkpoint_config as checkpoint_config
from lcm.hf.merge import with_checkpoint as with_checkpoint
from lcm.hf.weights import load as load
from lcm.hf.weights import load_config as load_config
from lcm.hf.weights import load_sharded as load_sharded
from lcm.hf.weights import load_tokenizer as load_tokenizer
from lcm.hf.weights import save as save
