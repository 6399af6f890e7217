"""A tiny model for tests and smoke runs (seconds on a CPU).

python -m lcm.train --config configs/tiny.py --workdir /tmp/tiny
"""

from configs import base


def get_config():
    config = base.get_config()
    config.seq_len = 64
    config.model.d_model = 32
    config.model.num_layers = 2
    config.model.num_heads = 2
    config.model.num_kv_heads = 1
    config.model.head_dim = 16
    config.model.mlp_dim = 64
    config.model.attention.block_q = 32
    config.model.attention.block_kv = 32
    config.data.batch_size = 8
    config.train.num_steps = 6
    config.train.warmup_steps = 2
    config.train.log_every = 2
    config.train.eval_every = 3
    config.train.eval_batches = 2
    config.train.checkpoint_every = 3
    return config
