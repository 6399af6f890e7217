"""One cell of the context-parallel comparison: Llama-3-8B with one strategy on a v5p slice.

``get_config("<impl>,<seq_len>,<batch>,<chips>[,<ulysses_degree>]")``: Llama-3-8B
(``configs/models/llama3_8b.py``, full remat) at ``seq_len`` tokens, ``batch`` sequences (one
per ``fsdp`` rank), each spread over ``context = chips / batch`` chips with attention ``impl``
(``ring``, ``all_gather``, ``ulysses`` or ``usp``) on the Pallas kernels as its inner tiles, the
sequence in the contiguous layout (``usp``: Ulysses over ``ulysses_degree`` chips, default 4).

    python -m lcm.compile --config experiments/context_parallel/configs.py:usp,131072,16,256 \
        --topology v5p:4x8x8
"""

from lcm import config as config_lib

MODEL = "configs/models/llama3_8b.py"


def get_config(arg: str = "ring,131072,4,64"):
    impl, seq_len, batch, chips, *degree = arg.split(",")
    seq_len, batch, chips = int(seq_len), int(batch), int(chips)
    config = config_lib.load_config(str(config_lib.REPO_ROOT / MODEL))
    config.seq_len = seq_len
    config.data.batch_size = batch
    config.mesh.shape = (1, batch, chips // batch, 1)
    attention = config.model.attention
    attention.impl, attention.context_inner = impl, "pallas"
    attention.ulysses_degree = int(degree[0]) if degree else 4
    return config
