r"""Every default of lcm, one comment per field. Experiment configs import it, change what differs.

Run the main job on it:

    python -m lcm.train --config configs/base.py --workdir /tmp/base
    python -m lcm.train --config configs/base.py --workdir /tmp/base \
        --config.model.num_layers=4 --config.mesh.shape="(2,1,4,1)"
"""

from ml_collections import ConfigDict, FieldReference, config_dict


def get_config() -> ConfigDict:
    config = ConfigDict()
    # Shared by data (sequence length of training examples) and model/attention checks.
    seq_len = FieldReference(256)

    config.seq_len = seq_len  # training sequence length in tokens

    # ---- model: decoder-only transformer -------------------------------------------------
    config.model = ConfigDict()
    config.model.vocab_size = 256  # byte-level tokenizer by default
    config.model.d_model = 128  # [D] residual width
    config.model.num_layers = 2  # [L] transformer blocks
    config.model.num_heads = 4  # [N] query heads
    config.model.num_kv_heads = 2  # [K] key/value heads (GQA); must divide num_heads
    config.model.head_dim = 32  # [H] per-head width; even, for RoPE pairs
    config.model.mlp_dim = 512  # [F] SwiGLU hidden width
    config.model.tie_embeddings = True  # share input embedding and output projection
    config.model.qk_norm = False  # RMSNorm on q and k before attention
    config.model.qkv_bias = False  # learned bias on the q/k/v projections (Qwen2)
    config.model.norm = "rms"  # residual-stream norms: rms | layernorm (scale, no bias; Cohere2)
    config.model.norm_eps = 1e-6  # norm epsilon (HF rms_norm_eps / layer_norm_eps; Phi-3: 1e-5)
    config.model.parallel_block = False  # x + attn(norm(x)) + mlp(norm(x)), one norm (Cohere2)
    config.model.scale_tied_logits = True  # tied logits / sqrt(d_model); HF checkpoints: False
    config.model.logit_scale = 1.0  # multiplies the output logits (HF Cohere2 logit_scale)
    config.model.loss_chunk = 2048  # positions per output-head chunk in train/eval loss; 0 = all
    # Hugging Face model directory (config.json + safetensors, lcm.hf); when set, scripts
    # take the model fields and initial weights from it.
    config.model.hf_path = config_dict.placeholder(str)
    config.model.dtype = "float32"  # compute dtype: float32 | bfloat16
    config.model.param_dtype = "float32"  # parameter dtype: float32 | bfloat16
    config.model.scan_layers = True  # nn.scan over layers (fast compiles)
    config.model.remat_policy = "none"  # none | full | save_attention | offload_attention | ...

    # Positional scheme: a registered name plus flat fields (lcm.positional).
    config.model.positional = ConfigDict()
    config.model.positional.name = "rope"  # registered scheme name (lcm.positional.POSITIONAL)
    config.model.positional.base = 10_000.0  # RoPE base theta (ABF = a larger base)
    config.model.positional.layout = "half"  # RoPE pairing: half (Llama/NeoX) | interleaved (GPT-J)
    config.model.positional.partial_rotary_factor = 1.0  # fraction of head_dim that is rotated
    # Hugging Face style rope_scaling; unset (None) fields take the HF defaults of the rope_type.
    config.model.positional.rope_scaling = ConfigDict()
    rs = config.model.positional.rope_scaling
    rs.rope_type = "default"  # default|linear|ntk|dynamic|yarn|llama3|longrope|resonance[_yarn]
    rs.factor = 1.0  # context extension factor
    rs.original_max_position_embeddings = config_dict.placeholder(int)  # pretraining length
    rs.beta_fast = config_dict.placeholder(float)  # YaRN ramp, fast end (HF default 32)
    rs.beta_slow = config_dict.placeholder(float)  # YaRN ramp, slow end (HF default 1)
    rs.mscale = config_dict.placeholder(float)  # YaRN mscale (DeepSeek style)
    rs.mscale_all_dim = config_dict.placeholder(float)  # YaRN mscale_all_dim (DeepSeek style)
    rs.attention_factor = config_dict.placeholder(float)  # multiplies cos/sin; None = derived
    rs.truncate = config_dict.placeholder(bool)  # YaRN: floor/ceil the ramp bounds (HF default)
    rs.low_freq_factor = config_dict.placeholder(float)  # llama3: required (Llama 3.1 uses 1.0)
    rs.high_freq_factor = config_dict.placeholder(float)  # llama3: required (Llama 3.1 uses 4.0)
    rs.short_factor = config_dict.placeholder(tuple)  # LongRoPE per-frequency factors, short
    rs.long_factor = config_dict.placeholder(tuple)  # LongRoPE per-frequency factors, long
    # Other schemes' fields (each read only by the scheme named in its comment).
    config.model.positional.head_scale_init = 1.6  # nope_head_scale: initial per-head temperature
    config.model.positional.tapa_theta = 0.5  # tapa: fraction of head_dim used for the amplitude
    config.model.positional.tapa_alpha = 0.1  # tapa: phase grows as |m - n| ** tapa_alpha
    config.model.positional.self_extend_group = 8  # self_extend: group size G beyond the window
    config.model.positional.self_extend_window = 1024  # self_extend: neighbour window W
    config.model.positional.lm_infinite_global = 10  # lm_infinite: first positions always visible
    config.model.positional.lm_infinite_local = 4096  # lm_infinite: recent positions visible
    # lm_infinite: distance ceiling; None = lm_infinite_local.
    config.model.positional.lm_infinite_max_distance = config_dict.placeholder(int)
    # Per-layer schedule (lcm.positional.schedule): which scheme and mask layer i uses.
    config.model.positional.schedule = "uniform"  # uniform | rnope_swa | explicit
    config.model.positional.nope_every = 4  # rnope_swa: layer i is NoPE+causal iff (i+1) % n == 0
    config.model.positional.swa_window = 4096  # rnope_swa: sliding window (left size), RoPE layers
    config.model.positional.layers = ()  # explicit: "scheme:mask[:window]" per layer, cyclic

    # Attention: a registered implementation plus its options (lcm.attention).
    config.model.attention = ConfigDict()
    config.model.attention.impl = "blockwise"  # registered in lcm.attention.ATTENTION: xla, ...
    config.model.attention.mask = "causal"  # causal | sliding_window | chunked_causal | full
    config.model.attention.window = 0  # sliding window (left) size; 0 = unused
    config.model.attention.block_q = 128  # query tile length (blockwise / pallas)
    config.model.attention.block_kv = 128  # key/value tile length (blockwise / pallas)
    # Context parallelism (ring | all_gather | ulysses | usp): the sequence is sharded over
    # context_axis, each device's attention runs on context_inner's tiles.
    config.model.attention.context_axis = "context"  # the mesh axis the sequence is sharded on
    config.model.attention.context_inner = "blockwise"  # per-device tiles: blockwise | pallas
    # token order for causal load balance: contiguous | striped | zigzag | balanced (per-row,
    # for packed documents); windowed masks skip ring hops only under contiguous
    config.model.attention.context_layout = "zigzag"
    config.model.attention.ulysses_degree = 2  # usp: devices splitting the heads (divides context)
    # Sparse attention (lcm.attention.sparse): moba | hsa | s2_attn | sink_window read these.
    config.model.attention.sparse_block = 512  # moba block, hsa chunk, s2_attn group length
    config.model.attention.sparse_top_k = 3  # moba: blocks per query (own included); hsa: chunks
    config.model.attention.hsa_weighting = "softmax"  # hsa chunk mixing: softmax | stick_breaking
    config.model.attention.sink = 4  # sink_window: first positions every query sees
    config.model.attention.recent = 2048  # sink_window: most recent keys seen, query included
    config.model.attention.sparse_kernel = "blockwise"  # sparse blocks on: blockwise | pallas
    config.model.attention.sparse_dense_last = 0  # last layers that use sparse_dense_impl (MoBA: 3)
    config.model.attention.sparse_dense_impl = "blockwise"  # the attention of those last layers
    config.model.attention.nsa_cmp_block = 32  # nsa: compression block length l
    config.model.attention.nsa_cmp_stride = 16  # nsa: compression stride d (divides l and l')
    config.model.attention.nsa_slc_block = 64  # nsa: selection block length l'
    config.model.attention.nsa_top_n = 16  # nsa: selected blocks per query, forced ones included
    config.model.attention.nsa_init_blocks = 1  # nsa: initial blocks always selected
    config.model.attention.nsa_local_blocks = 2  # nsa: most recent blocks always selected
    config.model.attention.nsa_window = 512  # nsa: sliding-window branch keys, query included

    # ---- data ----------------------------------------------------------------------------
    config.data = ConfigDict()
    config.data.seq_len = seq_len  # tokens per training example (same reference as above)
    config.data.batch_size = 8  # global batch size in sequences
    # registered corpus (lcm.data.CORPORA): stdlib | stdlib_files (one document per file) | text
    # | jsonl | synthetic_tasks
    config.data.corpus = "stdlib"
    config.data.path = config_dict.placeholder(str)  # file or directory for text / jsonl
    config.data.text_field = "text"  # jsonl: the string field holding a document's text
    config.data.tokenizer = "byte"  # byte (256 ids) | SentencePiece *.model | HF *.json path
    config.data.cache_dir = config_dict.placeholder(str)  # None = ~/.cache/lcm/tokens
    config.data.eval_fraction = 0.1  # share of documents (stdlib: packages) held out for eval
    config.data.split_seed = 0  # seed of the held-out split (independent of train.seed)
    config.data.packing = "first_fit"  # first_fit | best_fit (grain packers) | concat (chunk)
    config.data.packing_bins = 32  # rows first_fit / best_fit fill at once (more: less padding)
    config.data.document_masking = True  # segment ids per document (False: one segment per row)
    # Sequence-length curriculum: ((length, steps), ...) shortest first, before seq_len; constant
    # tokens per step (batch_size * seq_len / length rows). () = off.
    config.data.curriculum = ()
    # Training-data recipe (lcm.data.recipes): documents | concat_by_repo (ProLong) | structured
    # (SPLiCe) | untie_knots (UtK) | decomposition (Dataset Decomposition).
    config.data.recipe = "documents"
    config.data.mask_first_token = True  # a document's first token is never a target (ProLong)
    # concat_by_repo: ((min_tokens, weight), ...) length buckets of repositories, increasing from
    # 0; weight = share of packed rows drawn from the bucket.
    config.data.length_mix = ((0, 0.4), (1024, 0.6))
    config.data.structured_relation = "path"  # structured: path (same repo/dir) | bm25 (n-grams)
    config.data.structured_top_k = 2  # structured: related documents added per popped document
    config.data.utk_chunk_probs = (0.2, 0.4, 0.4)  # untie_knots: P(1, 2, 3 chunks) per document
    config.data.utk_keep_order = True  # untie_knots: a document's chunks keep their order
    config.data.utk_sort_task = False  # untie_knots: chunk ids + chunk-order recovery list
    config.data.decomposition_min = 128  # decomposition: shortest bucket (power of two, tokens)
    # Share of each training batch's rows packed from the synthetic_tasks corpus (passkey and
    # RULER-style retrieval documents, lcm.data.synthetic) instead of data.corpus; 0 = off,
    # 1 = every row synthetic (e.g. a retrieval fine-tune with train.init_from).
    config.data.synthetic_share = 0.0
    # Tasks of the synthetic rows (lcm.data.synthetic.TASKS names without a code haystack);
    # () = all of them.
    config.data.synthetic_tasks = ()
    config.data.synthetic_documents = 64  # synthetic_tasks corpus: documents per task
    # Loss on synthetic rows: all (every next token) | answer (only the answer after the
    # prompt; the retrieval circuit forms much sooner than under the full-context loss).
    config.data.synthetic_loss = "all"

    # ---- training ------------------------------------------------------------------------
    config.train = ConfigDict()
    config.train.seed = 0  # master seed: parameter init, data order
    config.train.num_steps = 200  # optimizer steps
    config.train.learning_rate = 3e-3  # peak learning rate
    config.train.warmup_steps = 20  # linear warmup steps
    config.train.min_lr_ratio = 0.1  # cosine decay ends at this fraction of the peak
    config.train.adam_b1 = 0.9  # AdamW beta1
    config.train.adam_b2 = 0.95  # AdamW beta2
    config.train.weight_decay = 0.1  # AdamW decoupled weight decay (matrices only)
    config.train.grad_clip = 1.0  # global-norm gradient clipping; 0 = off
    config.train.grad_accum_steps = 1  # micro-batches per step (batch_size must divide)
    config.train.z_loss = 0.0  # weight of the z-loss logsumexp(logits)^2 term; 0 = off
    config.train.log_every = 10  # steps between progress lines / metrics.jsonl records
    config.train.eval_every = 100  # steps between held-out evaluations; 0 = never
    config.train.eval_batches = 8  # held-out batches per evaluation (same for every eval)
    config.train.checkpoint_every = 100  # steps between checkpoints
    config.train.max_checkpoints = 3  # checkpoints kept (newest)
    # Per-device peak FLOP/s for MFU; 0 = lcm.chips' figure for the compute dtype (TPU, GPU),
    # or on CPU the host's float32 matmul peak measured at start (shared by simulated devices).
    config.train.peak_flops = 0.0
    # Non-finite loss or gradient norm: the update is always dropped; then "stop" raises (naming
    # the step and the parameters) or "skip" goes on, counting skipped steps in metrics.jsonl.
    config.train.nonfinite = "stop"  # stop | skip
    config.train.spike_factor = 3.0  # log a loss spike: loss > factor x running mean; 0 = off
    config.train.spike_decay = 0.99  # decay of that running mean (bias-corrected moving average)
    # Workdir whose newest checkpoint gives the initial weights of a fresh run (fine-tuning;
    # optimizer state and step start anew); None = random init (or model.hf_path).
    config.train.init_from = config_dict.placeholder(str)

    # ---- evaluation ----------------------------------------------------------------------
    config.eval = ConfigDict()
    config.eval.lengths = (128, 256, 512, 1024)  # evaluation lengths in tokens (every task)
    config.eval.protocol = "truncate"  # perplexity protocol: truncate | sliding
    config.eval.num_documents = 8  # held-out documents with > max(lengths) tokens, first by name
    config.eval.stride = 0  # sliding: window step in tokens (<= min(lengths)); 0 = length // 8
    config.eval.init = "checkpoint"  # checkpoint (newest readable in workdir) | random
    # Tasks run in order: perplexity and the lcm.data.synthetic.TASKS names.
    config.eval.tasks = ("perplexity", "passkey", "niah_single_1", "niah_single_2", "vt", "fwe")
    config.eval.depths = (0.0, 0.25, 0.5, 0.75, 1.0)  # needle depths (fraction), swept tasks
    config.eval.samples_per_cell = 2  # generated samples per (task, length, depth) cell
    config.eval.seed = 0  # seed of every generated sample (random init uses train.seed)
    config.eval.batch_size = 1  # perplexity windows per forward pass
    config.eval.label = ""  # run name: results in workdir/eval/<label>/; "" = workdir/eval/
    config.eval.compare = ()  # more results.json paths drawn in the perplexity plot

    # ---- inference (lcm.inference, python -m lcm.generate) ---------------------------------
    config.inference = ConfigDict()
    config.inference.attention_impl = "reference"  # decode attention: reference | xla (no hooks)
    config.inference.prefill_chunk = 256  # prompt tokens per prefill forward
    # Eviction policy (lcm.inference.POLICIES): streaming_llm | h2o | snapkv | caote; None = full.
    config.inference.cache_policy = config_dict.placeholder(str)
    config.inference.budget = config_dict.placeholder(int)  # tokens kept with a policy
    config.inference.sink = 4  # streaming_llm: first tokens always kept (attention sinks)
    config.inference.recent = 32  # h2o (and caote on h2o): most recent tokens always kept
    config.inference.snapkv_window = 32  # snapkv: observation-window queries (those tokens stay)
    config.inference.snapkv_kernel = 7  # snapkv: max-pool width over the votes (odd)
    config.inference.caote_base = "h2o"  # caote: score-based policy it re-ranks: h2o | snapkv
    config.inference.temperature = 0.0  # sampling temperature; 0 = greedy
    config.inference.top_p = 1.0  # nucleus sampling mass in (0, 1]; 1 = off
    config.inference.seed = 0  # sampling seed
    config.inference.max_new_tokens = 64  # python -m lcm.generate: tokens to generate

    # ---- device mesh (lcm.parallel) ------------------------------------------------------
    config.mesh = ConfigDict()
    config.mesh.axes = ("data", "fsdp", "context", "tensor")  # mesh axis names, fixed order
    config.mesh.shape = (-1, 1, 1, 1)  # size per axis; one -1 takes the remaining devices
    config.mesh.axis_types = "auto"  # auto (SPMD propagation) | explicit (sharding in types)
    # Logical axis -> mesh axes (lcm.parallel.sharding).
    config.mesh.rules = (
        ("batch", ("data", "fsdp")),
        ("length", "context"),
        ("kv_length", "context"),
        # Parameters (and Adam state) over fsdp AND context (ZeRO-3 over the context ranks too);
        # an activation's embed dim stays whole (its batch and length already use those axes).
        ("embed", ("fsdp", "context")),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("mlp", "tensor"),
        ("vocab", "tensor"),
        ("head_dim", None),
        ("layers", None),
    )
    return config
