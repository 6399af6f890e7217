"""The million-token Llama-3-8B step of the activation-memory study, one config per variant.

Llama-3-8B's shape (``configs/models/llama3_8b.py``) at 1,048,576 tokens per sequence, batch 4,
mesh data x fsdp x context x tensor = 1 x 4 x 16 x 1 (64 v5p chips), ring attention with Pallas
tiles; a variant sets the remat policy and the attention blocks (``block_q = block_kv``).

    python -m lcm.compile --config experiments/activation_memory/configs.py:save_attention,1024 \
        --topology v5p:4x4x4

``get_config("<remat policy>[,<block>]")``, block 512 by default.
"""

from lcm import config as config_lib

SEQ_LEN, BATCH, MESH = 1 << 20, 4, (1, 4, 16, 1)


def get_config(arg: str = "full,512"):
    policy, _, block = arg.partition(",")
    block = int(block or 512)
    config = config_lib.load_config(str(config_lib.REPO_ROOT / "configs/models/llama3_8b.py"))
    config.seq_len, config.data.batch_size, config.mesh.shape = SEQ_LEN, BATCH, MESH
    m = config.model
    m.attention.impl, m.attention.context_inner = "ring", "pallas"
    m.attention.block_q = m.attention.block_kv = block
    m.remat_policy = policy
    return config
