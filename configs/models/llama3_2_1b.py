"""Llama-3.2-1B's shape and RoPE settings (its Hugging Face config.json: tied embeddings, llama3
RoPE scaling by 32 from 8K), on ``configs/models/llama3_8b.py``'s training setup:

    python -m lcm.compile --config configs/models/llama3_2_1b.py --topology v5e:2x2 \\
        --config.data.batch_size=8
"""

from configs.models import llama3_8b


def get_config():
    config = llama3_8b.get_config()
    m = config.model
    m.d_model = 2048
    m.num_layers = 16
    m.num_heads = 32
    m.num_kv_heads = 8
    m.head_dim = 64
    m.mlp_dim = 8192
    m.tie_embeddings = True
    m.positional.rope_scaling.factor = 32.0
    return config
