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

from lcm.model.hf.mapping import FAMILIES as FAMILIES
from lcm.model.hf.mapping import config_from_hf as config_from_hf
from lcm.model.hf.mapping import hf_config as hf_config
from lcm.model.hf.mapping import read_config as read_config
from lcm.model.hf.merge import with_checkpoint as with_checkpoint
from lcm.model.hf.weights import load as load
from lcm.model.hf.weights import load_tokenizer as load_tokenizer
from lcm.model.hf.weights import save as save
