"""Config validation: every bad value fails before work starts, naming the key and what is allowed.

The expected messages are spelled out in full so a regression in wording or content fails here.
"""

import pathlib

import pytest
from ml_collections import ConfigDict

from lcm import config as config_lib

CONFIG_DIR = pathlib.Path(config_lib.REPO_ROOT, "configs")


def _base(**overrides):
    config = config_lib.base_config()
    config.unlock()
    for key, value in overrides.items():
        *parents, leaf = key.split("__")
        node = config
        for part in parents:
            node = node[part]
        # Bypass ConfigDict's own type-safety so the validator sees the bad type itself.
        node._fields[leaf] = value
    return config


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("**/*.py")), ids=lambda p: p.name)
def test_every_config_validates(path):
    config_lib.validate(config_lib.load_config(str(path)), num_devices=8)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"model__num_heads": 6, "model__num_kv_heads": 4},
            "config.model.num_heads = 6: must be a multiple of model.num_kv_heads = 4",
        ),
        ({"model__d_model": 0}, "config.model.d_model = 0: must be a positive integer"),
        ({"model__num_layers": -2}, "config.model.num_layers = -2: must be a positive integer"),
        ({"model__head_dim": 33}, "config.model.head_dim = 33: must be even"),
        (
            {"model__dtype": "float16"},
            "config.model.dtype = 'float16': allowed: 'float32', 'bfloat16'",
        ),
        (
            {"model__positional__layout": "neox"},
            "config.model.positional.layout = 'neox': allowed: 'half', 'interleaved'",
        ),
        (
            {"model__positional__partial_rotary_factor": 1.5},
            "config.model.positional.partial_rotary_factor = 1.5: must be in (0, 1]",
        ),
        (
            {"model__positional__partial_rotary_factor": 0.3},
            "config.model.positional.partial_rotary_factor = 0.3: int(model.head_dim * "
            "partial_rotary_factor) = 9 must be even and > 0",
        ),
        (
            {"model__positional__base": -1.0},
            "config.model.positional.base = -1.0: must be a number > 0",
        ),
        (
            {"model__positional__name": "rotary"},
            "config.model.positional.name = 'rotary': allowed: 'alibi', 'lm_infinite', 'nope', "
            "'nope_head_scale', 'rope', 'self_extend', 'tapa'",
        ),
        (
            {"model__positional__rope_scaling__rope_type": "ntk_aware"},
            "config.model.positional.rope_scaling.rope_type = 'ntk_aware': allowed: 'default', "
            "'linear', 'ntk', 'dynamic', 'yarn', 'llama3', 'longrope', 'resonance', "
            "'resonance_yarn'",
        ),
        (
            {"model__positional__rope_scaling__rope_type": "yarn"},
            "config.model.positional.rope_scaling.original_max_position_embeddings = None: is "
            "required when model.positional.rope_scaling.rope_type = 'yarn'",
        ),
        (
            {
                "model__positional__rope_scaling__rope_type": "llama3",
                "model__positional__rope_scaling__original_max_position_embeddings": 8192,
                "model__positional__rope_scaling__low_freq_factor": 1.0,
            },
            "config.model.positional.rope_scaling.high_freq_factor = None: is required when "
            "model.positional.rope_scaling.rope_type = 'llama3'",
        ),
        (
            {
                "model__positional__rope_scaling__rope_type": "linear",
                "model__positional__rope_scaling__beta_fast": 32.0,
            },
            "config.model.positional.rope_scaling.beta_fast = 32.0: is not read by "
            "model.positional.rope_scaling.rope_type = 'linear' (it reads: factor); unset it",
        ),
        (
            {
                "model__positional__rope_scaling__rope_type": "longrope",
                "model__positional__rope_scaling__original_max_position_embeddings": 64,
                "model__positional__rope_scaling__short_factor": (1.0,) * 16,
                "model__positional__rope_scaling__long_factor": (1.0,) * 15,
            },
            "config.model.positional.rope_scaling.long_factor = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, "
            "1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0): must have int(head_dim * "
            "partial_rotary_factor) / 2 = 16 entries",
        ),
        (
            {
                "model__positional__name": "self_extend",
                "model__positional__rope_scaling__rope_type": "dynamic",
                "model__positional__rope_scaling__original_max_position_embeddings": 64,
            },
            "config.model.positional.rope_scaling.rope_type = 'dynamic': self_extend needs "
            "length-independent frequencies; not allowed: dynamic, longrope",
        ),
        (
            {"model__positional__tapa_theta": 0.3},
            "config.model.positional.tapa_theta = 0.3: must be in (0, 1) with tapa_theta * "
            "model.head_dim (32) an integer",
        ),
        (
            {"model__positional__self_extend_group": 0},
            "config.model.positional.self_extend_group = 0: must be a positive integer",
        ),
        (
            {"model__positional__lm_infinite_max_distance": 0},
            "config.model.positional.lm_infinite_max_distance = 0: must be None "
            "(= lm_infinite_local) or a positive integer",
        ),
        (
            {"model__positional__schedule": "alternate"},
            "config.model.positional.schedule = 'alternate': allowed: 'uniform', 'rnope_swa', "
            "'explicit'",
        ),
        (
            {"model__positional__nope_every": 0},
            "config.model.positional.nope_every = 0: must be a positive integer",
        ),
        (
            {"model__positional__schedule": "explicit"},
            "config.model.positional.layers = (): must be non-empty when "
            "model.positional.schedule = 'explicit'",
        ),
        (
            {
                "model__positional__schedule": "explicit",
                "model__positional__layers": ("rope:causal", "xpos:causal", "nope:diag"),
            },
            "config.model.positional.layers = ('rope:causal', 'xpos:causal', 'nope:diag'): "
            "scheme 'xpos'; allowed: alibi, lm_infinite",
        ),
        (
            {
                "model__positional__schedule": "explicit",
                "model__positional__layers": ("nope:diag",),
            },
            "config.model.positional.layers = ('nope:diag',): layer entry 'nope:diag': mask "
            "'diag'; allowed: causal, sliding_window, chunked_causal, full",
        ),
        (
            {"model__attention__impl": "pallas", "model__attention__block_kv": 64},
            "config.model.attention.block_kv = 64: must be a multiple of 128 (or >= seq_len) "
            "for the Pallas kernel",
        ),
        (
            {"model__attention__context_layout": "spiral"},
            "config.model.attention.context_layout = 'spiral': allowed: 'contiguous', 'striped', "
            "'zigzag'",
        ),
        (
            {"model__attention__impl": "ring", "mesh__shape": (1, 1, 8, 1), "seq_len": 128 + 8},
            "config.seq_len = 136: must be a multiple of 16 for the 'zigzag' ring layout over "
            "mesh axis 'context' of size 8",
        ),
        (
            {"model__attention__impl": "flash"},
            "config.model.attention.impl = 'flash': allowed: 'all_gather', 'blockwise', ",
        ),
        (
            {"model__attention__mask": "diagonal"},
            "config.model.attention.mask = 'diagonal': allowed: 'causal', 'sliding_window'",
        ),
        (
            {"model__attention__mask": "sliding_window"},
            "config.model.attention.window = 0: must be > 0 when model.attention.mask",
        ),
        (
            {"seq_len": 200},
            "config.seq_len = 200: must be a multiple of model.attention.block_q = 128 for "
            "model.attention.impl = 'blockwise'",
        ),
        (
            {"model__attention__sparse_top_k": 0},
            "config.model.attention.sparse_top_k = 0: must be a positive integer",
        ),
        (
            {"model__attention__hsa_weighting": "max"},
            "config.model.attention.hsa_weighting = 'max': allowed: 'softmax', 'stick_breaking'",
        ),
        ({"model__attention__sink": -1}, "config.model.attention.sink = -1: must be an integer"),
        (
            {"model__attention__impl": "s2_attn", "model__attention__sparse_block": 1},
            "config.model.attention.sparse_block = 1: must be >= 2 for model.attention.impl",
        ),
        ({"data__batch_size": 0}, "config.data.batch_size = 0: must be a positive integer"),
        (
            {"data__corpus": "web"},
            "config.data.corpus = 'web': allowed: 'jsonl', 'stdlib', 'stdlib_files', "
            "'synthetic_tasks', 'text'",
        ),
        (
            {"data__corpus": "jsonl", "data__path": "x.jsonl", "data__text_field": ""},
            "config.data.text_field = '': must be a non-empty field name",
        ),
        (
            {"data__tokenizer": "missing/tokenizer.json"},
            "config.data.tokenizer = 'missing/tokenizer.json': allowed: 'byte' or an existing",
        ),
        (
            {"model__vocab_size": 100},
            "config.model.vocab_size = 100: must be >= 256 for data.tokenizer = 'byte'",
        ),
        ({"data__eval_fraction": 1.0}, "config.data.eval_fraction = 1.0: must be in [0, 1)"),
        ({"data__split_seed": -1}, "config.data.split_seed = -1: must be an integer >= 0"),
        (
            {"data__packing": "greedy"},
            "config.data.packing = 'greedy': allowed: 'first_fit', 'best_fit', 'concat'",
        ),
        ({"data__packing_bins": 0}, "config.data.packing_bins = 0: must be a positive integer"),
        ({"data__document_masking": 1}, "config.data.document_masking = 1: must be of type bool"),
        (
            {"data__curriculum": ((128,),)},
            "config.data.curriculum = ((128,),): must be a tuple of (length, steps) pairs",
        ),
        (
            {"data__curriculum": ((128, 5), (128, 5)), "seq_len": 512},
            "config.data.curriculum = ((128, 5), (128, 5)): lengths must increase",
        ),
        (
            {"data__curriculum": ((256, 5),)},
            "config.data.curriculum = ((256, 5),): lengths must be shorter than seq_len = 256",
        ),
        (
            {"data__curriculum": ((64, 5),)},
            "config.data.curriculum = ((64, 5),): lengths must be multiples of "
            "model.attention.block_q = 128 for model.attention.impl = 'blockwise'",
        ),
        (
            {
                "data__curriculum": ((2, 5),),
                "seq_len": 8,
                "model__attention__impl": "xla",
                "mesh__shape": (1, 1, 4, 2),
            },
            "config.data.curriculum = ((2, 5),): lengths must be multiples of the mesh context "
            "size 4",
        ),
        (
            {"data__corpus": "jsonl"},
            "config.data.path = None: is required when data.corpus is text or jsonl",
        ),
        (
            {"data__corpus": "text", "data__path": "/nonexistent/corpus"},
            "config.data.path = '/nonexistent/corpus': no such file or directory (data.corpus "
            "text / jsonl reads it)",
        ),
        (
            {"model__positional__name": "alibi", "model__attention__impl": "pallas"},
            "config.model.attention.impl = 'pallas': attention impl 'pallas' cannot serve "
            "positional scheme 'alibi' (layer mask 'causal'): it lacks custom_logits; "
            "implementations that can: all_gather, blockwise, reference, ring,",
        ),
        (
            {
                "model__positional__name": "tapa",
                "model__positional__tapa_theta": 0.25,
                "model__attention__impl": "moba",
            },
            "config.model.attention.impl = 'moba': attention impl 'moba' cannot serve positional "
            "scheme 'tapa' (layer mask 'causal'): it lacks custom_logits",
        ),
        (
            {
                "model__positional__name": "alibi",
                "model__attention__impl": "ring",
                "model__attention__context_inner": "pallas",
            },
            "config.model.attention.context_inner = 'pallas': attention impl 'ring' with inner = "
            "'pallas' lacks custom_logits, which positional scheme 'alibi' (layer mask 'causal') "
            "needs; its default inner = 'blockwise' has it",
        ),
        (
            {
                "model__positional__name": "alibi",
                "model__attention__impl": "sink_window",
                "model__attention__sparse_kernel": "pallas",
            },
            "config.model.attention.sparse_kernel = 'pallas': attention impl 'sink_window' with "
            "kernel = 'pallas' lacks custom_logits, which positional scheme 'alibi' (layer mask "
            "'causal') needs; its default kernel = 'blockwise' has it",
        ),
        (
            {"model__attention__impl": "moba", "model__attention__sparse_dense_last": 2},
            "config.model.attention.sparse_dense_last = 2: must be a multiple of the layer "
            "schedule's period 1 and below model.num_layers = 2",
        ),
        (
            {"model__attention__impl": "ring", "mesh__shape": (2, 1, 4, 1), "seq_len": 128 + 4},
            "config.seq_len = 132: must be a multiple of 8 for the 'zigzag' ring layout over "
            "mesh axis 'context' of size 4",
        ),
        (
            {"model__attention__block_kv": 96},
            "config.seq_len = 256: must be a multiple of model.attention.block_kv = 96 for "
            "model.attention.impl = 'blockwise'",
        ),
        ({"mesh__shape": (-1, 3, 1, 1)}, "config.mesh.shape = (-1, 3, 1, 1)"),
        ({"model__num_kv_heads": 0}, "config.model.num_kv_heads = 0: must be a positive integer"),
        ({"seq_len": -64}, "config.seq_len = -64: must be a positive integer"),
        (
            {"train__nonfinite": "ignore"},
            "config.train.nonfinite = 'ignore': allowed: 'stop', 'skip'",
        ),
        ({"train__spike_factor": 0.5}, "config.train.spike_factor = 0.5: must be 0 (off) or a"),
        ({"train__spike_decay": 1.0}, "config.train.spike_decay = 1.0: must be in [0, 1)"),
        ({"train__nonfinite": 1}, "config.train.nonfinite = 1: must be of type str"),
        ({"train__learning_rate": 0.0}, "config.train.learning_rate = 0.0: must be a number > 0"),
        ({"train__num_steps": 1.5}, "config.train.num_steps = 1.5: must be of type int"),
        ({"eval__lengths": ()}, "config.eval.lengths = (): must be a non-empty tuple"),
        ({"eval__protocol": "rolling"}, "config.eval.protocol = 'rolling': allowed: 'truncate'"),
        ({"eval__init": "best"}, "config.eval.init = 'best': allowed: 'checkpoint', 'random'"),
        ({"eval__stride": 200}, "config.eval.stride = 200: must be an integer in [0, min(eval"),
        ({"eval__stride": -1}, "config.eval.stride = -1: must be an integer in [0, min(eval"),
        ({"eval__tasks": ("ppl",)}, "config.eval.tasks = ('ppl',): must be a non-empty tuple of"),
        ({"eval__tasks": ()}, "config.eval.tasks = (): must be a non-empty tuple of"),
        ({"eval__depths": (0.5, 1.5)}, "config.eval.depths = (0.5, 1.5): must be a non-empty"),
        ({"eval__samples_per_cell": 0}, "config.eval.samples_per_cell = 0: must be a positive"),
        ({"eval__batch_size": 0}, "config.eval.batch_size = 0: must be a positive integer"),
        ({"eval__seed": -2}, "config.eval.seed = -2: must be an integer >= 0"),
        ({"eval__label": "a/b"}, "config.eval.label = 'a/b': must be a directory name"),
        ({"eval__label": ".."}, "config.eval.label = '..': must be a directory name"),
        ({"eval__compare": (1,)}, "config.eval.compare = (1,): must be a tuple of results.json"),
        ({"model__vocab_size": "256"}, "config.model.vocab_size = '256': must be of type int"),
        ({"model__qk_norm": 1}, "config.model.qk_norm = 1: must be of type bool"),
        ({"model__norm_eps": 0.0}, "config.model.norm_eps = 0.0: must be a number > 0"),
        ({"model__qkv_bias": 1}, "config.model.qkv_bias = 1: must be of type bool"),
        ({"model__norm": "ln"}, "config.model.norm = 'ln': allowed: 'rms', 'layernorm'"),
        ({"model__parallel_block": 1}, "config.model.parallel_block = 1: must be of type bool"),
        ({"model__logit_scale": 0.0}, "config.model.logit_scale = 0.0: must be a number > 0"),
        (
            {"model__loss_chunk": -1},
            "config.model.loss_chunk = -1: must be an integer >= 0 (positions per loss chunk; "
            "0 = full logits)",
        ),
        (
            {"model__hf_path": "/nonexistent"},
            "config.model.hf_path = '/nonexistent': must be None or a directory holding a "
            "Hugging Face config.json",
        ),
        ({"mesh__shape": (3, 1, 1, 1)}, "config.mesh.shape = (3, 1, 1, 1): product 3 != 8 devices"),
        (
            {"mesh__axes": ("data", "fsdp", "ctx", "tensor")},
            "config.mesh.axes = ('data', 'fsdp', 'ctx', 'tensor'): unknown axis name(s) ['ctx']; "
            "allowed: data, fsdp, context, tensor",
        ),
        (
            {"mesh__axis_types": "manual"},
            "config.mesh.axis_types = 'manual'; allowed: 'auto', 'explicit'",
        ),
        (
            {"mesh__shape": (1, 1, 8, 1), "seq_len": 1},
            "config.seq_len = 1: must be a multiple of the mesh context size 8",
        ),
        (
            {"mesh__shape": (1, 1, 1, 8)},
            "config.model.num_kv_heads = 2: must be a multiple of the mesh tensor size 8",
        ),
        (
            {"model__attention__impl": "ulysses", "mesh__shape": (1, 1, 8, 1)},
            "config.model.num_heads = 4: 4 heads per device (over mesh axis 'tensor' = 1) must "
            "be a multiple of the Ulysses degree 8 of model.attention.impl = 'ulysses'",
        ),
        (
            {
                "model__attention__impl": "usp",
                "model__attention__ulysses_degree": 3,
                "mesh__shape": (1, 1, 8, 1),
            },
            "config.model.attention.ulysses_degree = 3: must divide the mesh axis 'context' size 8",
        ),
        (
            {"model__attention__impl": "usp", "mesh__shape": (1, 1, 8, 1), "seq_len": 256 + 4},
            "config.seq_len = 260: must be a multiple of 8 for the 'zigzag' usp layout over "
            "mesh axis 'context' of size 8",  # zigzag over 4 ring shards (8 chunks) and 8 devices
        ),
        (
            {"model__positional__name": "alibi", "model__attention__impl": "ulysses"},
            "config.model.attention.impl = 'ulysses': attention impl 'ulysses' cannot serve "
            "positional scheme 'alibi' (layer mask 'causal'): it lacks per_head_logits",
        ),
        (
            {"data__batch_size": 4, "mesh__shape": (8, 1, 1, 1)},
            "config.data.batch_size = 4: must be a multiple of mesh data*fsdp = 8",
        ),
        (
            {"data__batch_size": 8, "train__grad_accum_steps": 2, "mesh__shape": (8, 1, 1, 1)},
            "config.data.batch_size = 8: must be a multiple of train.grad_accum_steps x mesh "
            "data*fsdp = 2 x 8: every micro-batch is sharded like the batch",
        ),
    ],
)
def test_bad_values_name_key_and_allowed(overrides, message):
    with pytest.raises(ValueError) as err:
        config_lib.validate(_base(**overrides), num_devices=8)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "is an empty corpus: no non-empty, non-hidden file there"),
        ("", "is an empty corpus: no non-empty, non-hidden file there"),
        ("text", None),
    ],
    ids=["empty-dir", "empty-file", "ok"],
)
def test_data_path_must_hold_data(tmp_path, content, message):
    path = tmp_path / "corpus"
    path.mkdir()
    (path / ".hidden").write_text("not read")
    if content is not None:
        (path / "a.txt").write_text(content)
    config = _base(data__corpus="text", data__path=str(path))
    if message is None:
        config_lib.validate(config, num_devices=8)
        return
    with pytest.raises(ValueError) as err:
        config_lib.validate(config, num_devices=8)
    assert f"config.data.path = {str(path)!r}: {message}" in str(err.value)


def test_unknown_and_missing_keys():
    config = _base()
    config.model.num_head = 4  # typo of num_heads
    del config.train["warmup_steps"]
    with pytest.raises(ValueError) as err:
        config_lib.validate(config)
    text = str(err.value)
    assert "config.model.num_head = 4: unknown key; allowed keys here: attention, d_model" in text
    assert "config.train.warmup_steps is missing (configs/base.py defines it)" in text


def test_every_problem_is_reported_at_once():
    with pytest.raises(ValueError) as err:
        config_lib.validate(_base(model__d_model=0, train__num_steps=0, eval__num_documents=-1))
    lines = str(err.value).splitlines()[1:]
    assert [line.split(" = ")[0].strip() for line in lines] == [
        "config.model.d_model",
        "config.train.num_steps",
        "config.eval.num_documents",
    ]


def test_locked_config_rejects_typo_and_load_config_arg(tmp_path):
    config = config_lib.base_config()
    with pytest.raises(AttributeError):
        config.model.num_head = 3
    spec = tmp_path / "exp.py"
    spec.write_text(
        "from ml_collections import ConfigDict\n"
        "def get_config(arg=None):\n"
        "    return ConfigDict({'arg': arg})\n"
    )
    assert config_lib.load_config(f"{spec}:long").arg == "long"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        config_lib.load_config(str(tmp_path / "missing.py"))


def test_data_curriculum_and_tokenizer_files_accepted(tmp_path):
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text("{}")
    config = _base(
        data__curriculum=((128, 10), (256, 10)),
        seq_len=512,
        data__tokenizer=str(tokenizer),
        model__vocab_size=32_000,
    )
    config_lib.validate(config, num_devices=8)


def test_base_config_is_valid_and_typed():
    config = config_lib.base_config()
    assert isinstance(config, ConfigDict)
    config_lib.validate(config, num_devices=1)
    assert config.data.seq_len == config.seq_len  # one shared reference


@pytest.mark.parametrize(
    "overrides",
    [
        {
            "model__positional__rope_scaling__rope_type": "llama3",
            "model__positional__rope_scaling__factor": 8.0,
            "model__positional__rope_scaling__original_max_position_embeddings": 8192,
            "model__positional__rope_scaling__low_freq_factor": 1.0,
            "model__positional__rope_scaling__high_freq_factor": 4.0,
        },
        {
            "model__positional__rope_scaling__rope_type": "resonance_yarn",
            "model__positional__rope_scaling__factor": 4.0,
            "model__positional__rope_scaling__original_max_position_embeddings": 64,
            "model__positional__rope_scaling__beta_fast": 16.0,
        },
        {"model__positional__schedule": "rnope_swa", "model__positional__swa_window": 64},
        {
            "model__positional__schedule": "explicit",
            "model__positional__layers": ("rope:sliding_window:64", "lm_infinite:causal"),
        },
        {"model__positional__name": "tapa", "model__positional__tapa_theta": 0.25},
    ],
)
def test_valid_positional_settings_pass(overrides):
    config_lib.validate(_base(**overrides), num_devices=8)
