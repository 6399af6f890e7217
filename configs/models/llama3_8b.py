"""Llama-3-8B's shape (Llama-3.1-8B's Hugging Face config.json: the same shapes, plus its llama3
RoPE scaling to 128K), bf16 compute with float32 parameters, full remat, the Pallas kernels, and
every chip's batch rows on the fsdp axis. Compile it for a slice before renting one:

    python -m lcm.compile --config configs/models/llama3_8b.py --topology v5p:4x4x4 \\
        --config.seq_len=131072 --config.data.batch_size=16 \\
        --config.model.attention.impl=ring --config.model.attention.context_inner=pallas \\
        --config.mesh.shape="(1,16,4,1)"

``configs/models/llama3_2_1b.py`` and ``llama3_70b.py`` change the shape fields only.
"""

from configs import base


def get_config():
    config = base.get_config()
    config.seq_len = 8192
    m = config.model
    m.vocab_size = 128_256
    m.d_model = 4096
    m.num_layers = 32
    m.num_heads = 32
    m.num_kv_heads = 8
    m.head_dim = 128
    m.mlp_dim = 14_336
    m.tie_embeddings = False
    m.scale_tied_logits = False
    m.norm_eps = 1e-5
    m.dtype = "bfloat16"
    m.param_dtype = "float32"
    m.remat_policy = "full"
    m.positional.base = 500_000.0
    rs = m.positional.rope_scaling
    rs.rope_type = "llama3"
    rs.factor = 8.0
    rs.low_freq_factor = 1.0
    rs.high_freq_factor = 4.0
    rs.original_max_position_embeddings = 8192
    m.attention.impl = "pallas"
    m.attention.block_q = 512
    m.attention.block_kv = 512
    config.data.batch_size = 64
    config.train.learning_rate = 3e-4
    config.train.warmup_steps = 2000
    config.train.num_steps = 100_000
    config.train.log_every = 10
    config.train.eval_every = 1000
    config.train.checkpoint_every = 1000
    config.mesh.shape = (1, -1, 1, 1)
    return config
