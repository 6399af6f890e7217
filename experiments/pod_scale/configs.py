"""One cell of the pod-scale table: a model at a sequence length and batch on a v5p slice.

``get_config("<model>,<seq_len>,<batch>,<chips>")``: the model of ``MODELS`` (its
``configs/models/`` config) at ``seq_len`` tokens, ``batch`` sequences, one per ``fsdp`` rank,
each spread over ``context = chips / batch`` chips: ring attention with the Pallas kernels as
its inner tiles when ``context > 1``, the plain Pallas kernels otherwise; full remat (the
models' default).

    python -m lcm.compile --config experiments/pod_scale/configs.py:Llama-3-8B,1048576,4,64 \
        --topology v5p:4x4x4
"""

from lcm import config as config_lib

MODELS = {
    "Llama-3.2-1B": "configs/models/llama3_2_1b.py",
    "Llama-3-8B": "configs/models/llama3_8b.py",
    "Llama-3-70B": "configs/models/llama3_70b.py",
}


def get_config(arg: str = "Llama-3-8B,1048576,4,64"):
    model, seq_len, batch, chips = arg.split(",")
    seq_len, batch, chips = int(seq_len), int(batch), int(chips)
    config = config_lib.load_config(str(config_lib.REPO_ROOT / MODELS[model]))
    context = chips // batch
    config.seq_len = seq_len
    config.data.batch_size = batch
    config.mesh.shape = (1, batch, context, 1)
    attention = config.model.attention
    if context > 1:
        attention.impl, attention.context_inner = "ring", "pallas"
    return config
