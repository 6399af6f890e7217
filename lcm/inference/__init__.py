"""Long-context inference: KV cache, chunked prefill, cached decoding, eviction policies.

    from lcm import inference
    tokens = inference.generate(params, config, prompt, max_new_tokens=32,
                                cache_policy="h2o", budget=512)

Modules: ``cache`` (the per-layer cache pytree and attention over it), ``policies`` (eviction
under a budget: ``streaming_llm``, ``h2o``, ``snapkv``, ``caote``), ``sampling`` (greedy,
temperature, top-p) and ``decoding`` (prefill, decode step, ``generate``).
"""

from lcm.inference import cache as cache
from lcm.inference import policies as policies
from lcm.inference import sampling as sampling
from lcm.inference.decoding import Decoder as Decoder
from lcm.inference.decoding import generate as generate
from lcm.inference.decoding import make_decoder as make_decoder
from lcm.inference.policies import POLICIES as POLICIES
