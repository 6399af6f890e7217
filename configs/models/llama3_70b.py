"""Llama-3-70B's shape (Llama-3.1-70B's Hugging Face config.json: llama3 RoPE scaling by 8 from
8K), on ``configs/models/llama3_8b.py``'s training setup:

    python -m lcm.compile --config configs/models/llama3_70b.py --topology v5p:8x8x8
"""

from configs.models import llama3_8b


def get_config():
    config = llama3_8b.get_config()
    m = config.model
    m.d_model = 8192
    m.num_layers = 80
    m.num_heads = 64
    m.num_kv_heads = 8
    m.head_dim = 128
    m.mlp_dim = 28_672
    return config
