"""The data-recipe study's configs: one small RoPE model, trained on each recipe.

``get_config("<recipe>[,<setting>]")``: the model of ``SETTINGS[setting]`` (``toy``,
``default``, ``full``) with ``RECIPES[recipe]`` as its ``config.data`` overrides; every other
field is shared, so the recipes train the same model from the same initialization for the same
tokens. The toy setting trains on a few small packages (``data_recipes_toy``, registered here).

    python -m lcm.train --config experiments/data_recipes/configs.py:structured --workdir DIR
"""

from lcm import config as config_lib

# name -> config.data overrides (every other field is shared).
RECIPES = {
    "chunk": {
        "recipe": "documents",
        "packing": "concat",
        "document_masking": False,
        "mask_first_token": False,
    },
    "packed": {"recipe": "documents", "packing": "best_fit", "document_masking": True},
    "concat_by_repo": {"recipe": "concat_by_repo", "packing": "best_fit", "document_masking": True},
    "structured": {"recipe": "structured", "packing": "best_fit", "document_masking": False},
    "untie_knots": {"recipe": "untie_knots"},
    "decomposition": {"recipe": "decomposition"},
}
# The toy setting trains on a few small packages (seconds of data planning, not minutes).
TOY_CORPUS = "data_recipes_toy"
TOY_PACKAGES = (
    "contextvars", "struct", "decimal", "tty", "this", "keyword", "secrets", "token", "sqlite3",
    "dbm", "json", "collections",
)  # fmt: skip
SETTINGS = {
    # seq_len, batch, steps, d_model, layers, heads, mlp, eval documents, samples per cell
    "toy": dict(seq_len=64, batch=4, steps=3, d_model=32, layers=1, heads=2, mlp=64, docs=2, n=1),
    "default": dict(
        seq_len=256, batch=8, steps=200, d_model=64, layers=2, heads=4, mlp=192, docs=8, n=2
    ),
    "full": dict(
        seq_len=256, batch=16, steps=600, d_model=128, layers=4, heads=4, mlp=384, docs=16, n=4
    ),
}


def get_config(arg: str = "packed"):
    """``"<recipe>[,<setting>]"``: the study's model trained on ``recipe``."""
    name, _, setting_name = arg.partition(",")
    setting_name = setting_name or "default"
    s = SETTINGS[setting_name]
    toy = setting_name == "toy"
    if toy:
        register_toy_corpus()
    config = config_lib.base_config()
    config.unlock()
    config.seq_len = s["seq_len"]
    m = config.model
    m.vocab_size = 264  # 256 bytes + Untie the Knots' 7 markers (same model for every recipe)
    m.d_model, m.num_layers, m.num_heads, m.num_kv_heads = s["d_model"], s["layers"], s["heads"], 2
    m.head_dim, m.mlp_dim = s["d_model"] // s["heads"], s["mlp"]
    m.attention.impl = "xla"
    d = config.data
    d.corpus = TOY_CORPUS if toy else "stdlib_files"
    d.batch_size = s["batch"]
    d.eval_fraction = 0.25 if toy else 0.1
    d.length_mix = ((0, 0.4), (1024 if toy else 4 * s["seq_len"], 0.6))
    d.decomposition_min = 32 if s["seq_len"] >= 64 else 16
    for key, value in RECIPES[name].items():
        d[key] = value
    t = config.train
    t.num_steps = s["steps"]
    t.warmup_steps = max(1, s["steps"] // 10)
    t.log_every = max(1, s["steps"] // 6)
    t.eval_every = s["steps"]
    t.eval_batches = 4
    t.checkpoint_every = s["steps"]
    t.max_checkpoints = 1
    t.peak_flops = 1e9  # no matmul benchmark at start (MFU is not reported here)
    e = config.eval
    e.lengths = tuple(s["seq_len"] * f for f in (1, 2, 4))
    e.tasks = ("perplexity", "passkey", "niah_single_1")
    e.depths = (0.0, 0.5, 1.0)
    e.samples_per_cell = s["n"]
    e.num_documents = s["docs"]
    e.label = name
    return config


def register_toy_corpus() -> None:
    from lcm.data import CORPORA, corpora

    if TOY_CORPUS not in CORPORA:
        CORPORA.register(TOY_CORPUS)(
            lambda data: corpora.stdlib_files_corpus(packages=TOY_PACKAGES)
        )
