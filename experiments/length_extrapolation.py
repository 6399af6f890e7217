"""Length extrapolation of positional schemes: perplexity from L/2 to 16L, trained at L.

    .venv/bin/python experiments/length_extrapolation.py            # default: 2-core CPU
    .venv/bin/python experiments/length_extrapolation.py --full     # larger, for an accelerator
    .venv/bin/python experiments/length_extrapolation.py --toy      # tiny sizes; the smoke test

1. Trains one small byte-level model per scheme (``configs/experiments/positional_schemes.py``:
   RoPE, NoPE, ALiBi, RNoPE-SWA, TAPA) at sequence L = 256 on the stdlib corpus, same size,
   data (a quarter of the rows synthetic passkey documents), seed and steps.
2. Perplexity at L/2 .. 16L with the ``truncate`` protocol (each held-out document's first
   ``n + 1`` tokens; YaRN's protocol, Peng et al. 2023, arXiv:2309.00071) via ``lcm.eval``.
3. Training-free extension of the RoPE model by config override, factor 4 (target 4L): PI
   (Chen et al. 2023, arXiv:2306.15595), NTK-aware (bloc97 2023), YaRN (Peng et al. 2023),
   dynamic NTK (emozilla 2023), SelfExtend (Jin et al. 2024, arXiv:2401.01325) and LM-Infinite
   (Han et al. 2024, arXiv:2308.16137).
4. A short fine-tune of the RoPE model at 4L with PI and with YaRN (``config.train.init_from``),
   same tokens per step, evaluated the same way; with two controls of the same steps and
   tokens: unscaled RoPE fine-tuned at 4L, and RoPE trained on at L.

Writes ``experiments/results/length_extrapolation.md`` (table, checks, provenance) and
``length_extrapolation.png``. Models and eval outputs go to ``--workdir`` (default
``workdir/experiments/positional-<setting>``, shared with ``passkey_depth.py``, whose retrieval
models live in ``<scheme>_passkey/``; a model already trained there is reused). ``--toy`` and
``--full`` write their results under the workdir unless ``--out`` is given.
"""

from __future__ import annotations

import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import small_runs

from lcm import config as config_lib

CONFIG = small_runs.REPO_ROOT / "configs" / "experiments" / "positional_schemes.py"
SCHEMES = ("rope", "nope", "alibi", "rnope_swa", "tapa")
FACTOR = 4  # training-free and fine-tuned extension factor: target length 4L
NAME = "length_extrapolation"

# Per-setting overrides of every scheme's config (``--toy`` / default / ``--full``).
SETTINGS = {
    "toy": {
        "seq_len": 32,
        "model.d_model": 32,
        "model.num_heads": 2,
        "model.num_kv_heads": 1,
        "model.head_dim": 16,
        "model.mlp_dim": 64,
        "model.attention.block_q": 16,
        "model.attention.block_kv": 16,
        "model.positional.swa_window": 8,
        "data.batch_size": 4,
        "data.synthetic_share": 0.0,  # no synthetic task fits 32 bytes
        "train.num_steps": 2,
        "train.warmup_steps": 1,
        "train.log_every": 1,
        "train.eval_every": 0,
        "train.checkpoint_every": 2,
        "train.peak_flops": 1e9,
        "eval.lengths": (32, 64),
        "eval.num_documents": 1,
    },
    "default": {"train.peak_flops": 1e9},  # MFU is not reported; skip the matmul timing
    "full": {
        "seq_len": 512,
        "model.d_model": 512,
        "model.num_layers": 8,
        "model.num_heads": 8,
        "model.num_kv_heads": 4,
        "model.head_dim": 64,
        "model.mlp_dim": 1536,
        "model.positional.swa_window": 128,
        "model.positional.nope_every": 4,
        "data.batch_size": 32,
        "train.num_steps": 5000,
        "train.warmup_steps": 200,
        "train.log_every": 100,
        "train.eval_every": 1000,
        "train.checkpoint_every": 1000,
        "eval.lengths": (256, 512, 1024, 2048, 4096, 8192),
        "eval.num_documents": 16,
    },
}
FINE_TUNE_STEPS = {"toy": 2, "default": 100, "full": 500}


def scheme_config(scheme: str, setting: str):
    return small_runs.override(config_lib.load_config(f"{CONFIG}:{scheme}"), SETTINGS[setting])


def training_free(rope, length: int) -> dict:
    """Label -> the RoPE model's config with a training-free extension to ``FACTOR * length``."""
    p = "model.positional."
    rs = p + "rope_scaling."

    def scaled(rope_type: str, **extra):
        return {rs + "rope_type": rope_type, rs + "factor": float(FACTOR), **extra}

    original = {rs + "original_max_position_embeddings": length}
    window = length // 2  # SelfExtend: exact neighbours W = L/2, group G so 16L maps below L
    variants = {
        f"rope+pi{FACTOR}": scaled("linear"),
        f"rope+ntk{FACTOR}": scaled("ntk"),
        f"rope+yarn{FACTOR}": scaled("yarn", **original),
        f"rope+dynamic{FACTOR}": scaled("dynamic", **original),
        "self_extend": {
            p + "name": "self_extend",
            p + "self_extend_window": window,
            p + "self_extend_group": 32,
        },
        "lm_infinite": {
            p + "name": "lm_infinite",
            p + "lm_infinite_global": 10,
            p + "lm_infinite_local": length,
            p + "lm_infinite_max_distance": length,
        },
    }
    return {label: small_runs.override(rope, o) for label, o in variants.items()}


def fine_tune_config(variant, rope_workdir: pathlib.Path, length: int, steps: int, factor=FACTOR):
    """``variant`` (a RoPE config, rescaled or not) trained ``steps`` more steps at
    ``factor * length`` (``factor = 1``: the control, more training at L)."""
    batch = variant.data.batch_size
    return small_runs.override(
        variant,
        {
            "seq_len": factor * length,
            "data.batch_size": max(batch // factor, 1),  # same tokens per step as pretraining
            "data.synthetic_share": 0.0,  # too few rows per batch at 4L for a share of them
            "train.init_from": str(rope_workdir),
            "train.num_steps": steps,
            "train.warmup_steps": max(steps // 10, 1),
            "train.learning_rate": variant.train.learning_rate / 3,
            "train.eval_every": 0,
            "train.checkpoint_every": steps,
        },
    )


def _ppl(results: dict) -> dict[int, float]:
    return {r["length"]: r["perplexity"] for r in results["perplexity"]["results"]}


def _plot(rows: dict, groups: dict, dashed, length: int, path: pathlib.Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, (title, labels) in zip(axes, groups.items(), strict=True):
        for label in labels:
            xs = sorted(rows[label])
            style = "--" if label in dashed else "-"
            ax.plot(xs, [rows[label][x] for x in xs], style, marker="o", label=label)
        for mult, text in ((1, "L"), (FACTOR, f"{FACTOR}L")):
            ax.axvline(mult * length, color="grey", lw=0.8, ls=":")
            ax.text(mult * length, 1.02, text, transform=ax.get_xaxis_transform(), ha="center")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("evaluation length (tokens, truncate protocol)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("perplexity (bytes)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _checks(rows: dict, length: int) -> list[str]:
    """The classic qualitative findings, each stated with the numbers that decide it.

    A length that was not evaluated (the toy setting) reads as nan.
    """
    nan = float("nan")
    rows = {
        label: {n: row.get(n, nan) for n in (length, 2 * length, FACTOR * length, *row)}
        for label, row in rows.items()
    }
    r = rows["rope"]
    far = max(x for x in r if x > length)
    lines = [
        f"- RoPE just past L: perplexity {r[length]:.3g} at L, {r[2 * length]:.3g} at 2L, "
        f"{r[far]:.3g} at {far // length}L (x{r[2 * length] / r[length]:.2f} at 2L).",
    ]
    for scheme in ("nope", "alibi", "rnope_swa", "tapa"):
        s = rows[scheme]
        lines.append(
            f"- {scheme}: x{s[2 * length] / s[length]:.2f} at 2L, x{s[far] / s[length]:.2f} at "
            f"{far // length}L relative to its own L (RoPE: x{r[2 * length] / r[length]:.2f}, "
            f"x{r[far] / r[length]:.2f})."
        )
    target = FACTOR * length
    tf = {k: rows[k][target] for k in rows if k.startswith("rope+") and not k.endswith("ft")}
    lines.append(
        f"- Training-free at {FACTOR}L: "
        + ", ".join(f"{k} {v:.3g}" for k, v in sorted(tf.items(), key=lambda kv: kv[1]))
        + f"; self_extend {rows['self_extend'][target]:.3g}, lm_infinite "
        f"{rows['lm_infinite'][target]:.3g}; plain RoPE {r[target]:.3g}."
    )
    plain, more = rows[f"rope ft {FACTOR}L"], rows["rope ft L"]
    for method in ("pi", "yarn"):
        ft, free = rows[f"rope+{method}{FACTOR} ft"], rows[f"rope+{method}{FACTOR}"]
        lines.append(
            f"- {method} fine-tuned at {FACTOR}L: {ft[target]:.3g} at {FACTOR}L (training-free "
            f"{free[target]:.3g}; plain RoPE at L {r[length]:.3g}; controls with the same "
            f"steps: unscaled RoPE fine-tuned at {FACTOR}L {plain[target]:.3g}, RoPE trained on "
            f"at L {more[target]:.3g})."
        )
    return lines


def run(args) -> pathlib.Path:
    setting = args.setting
    log = small_runs.logger(args.quiet)
    provenance = small_runs.Provenance(args.argv)
    work, out = pathlib.Path(args.workdir), pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    configs = {s: scheme_config(s, setting) for s in SCHEMES}
    length = configs["rope"].seq_len
    rows, final_loss = {}, {}
    for scheme, config in configs.items():
        final_loss[scheme] = small_runs.train(config, work / scheme, log=log).get("eval_loss")
        rows[scheme] = _ppl(small_runs.evaluate(config, work / scheme, scheme, log=log))
    variants = training_free(configs["rope"], length)
    for label, config in variants.items():
        rows[label] = _ppl(small_runs.evaluate(config, work / "rope", label, log=log))
    steps = FINE_TUNE_STEPS[setting]
    tuned = {  # label -> (config, workdir name): PI and YaRN at 4L, and the two controls
        f"rope+{m}{FACTOR} ft": (variants[f"rope+{m}{FACTOR}"], f"rope_{m}{FACTOR}_ft", FACTOR)
        for m in ("pi", "yarn")
    }
    tuned[f"rope ft {FACTOR}L"] = (configs["rope"], f"rope_{FACTOR}L_ft", FACTOR)  # no scaling
    tuned["rope ft L"] = (configs["rope"], "rope_L_ft", 1)  # the same steps at L
    for label, (variant, name, factor) in tuned.items():
        config = fine_tune_config(variant, work / "rope", length, steps, factor)
        small_runs.train(config, work / name, log=log)
        eval_config = small_runs.override(config, {"eval.lengths": configs["rope"].eval.lengths})
        rows[label] = _ppl(small_runs.evaluate(eval_config, work / name, name, log=log))

    lengths = list(configs["rope"].eval.lengths)
    png = out / f"{NAME}.png"
    trained_free = ["rope", *variants]
    _plot(
        rows,
        {
            f"trained at L={length} (same data, seed, steps)": list(SCHEMES),
            f"RoPE model: training-free x{FACTOR} (dashed) and {steps}-step fine-tunes": [
                *trained_free,
                *tuned,
            ],
        },
        list(variants),
        length,
        png,
    )
    header = ["model", *[f"{n} ({n / length:g}L)" for n in lengths]]
    table = small_runs.markdown_table(
        header, [[label, *[rows[label][n] for n in lengths]] for label in rows]
    )
    c = configs["rope"]
    m = c.model
    loss = ", ".join(f"{s} {v:.3f}" for s, v in final_loss.items() if v is not None)
    text = "\n".join(
        [
            "# Length extrapolation: perplexity from L/2 to 16L",
            "",
            "Produced by `experiments/length_extrapolation.py` (setting: "
            f"`{setting}`); numbers below are this run's, unedited.",
            "",
            "## Setup",
            "",
            f"- Models: byte-level decoder, {m.num_layers} layers, d_model {m.d_model}, "
            f"{m.num_heads} heads ({m.num_kv_heads} kv), head_dim {m.head_dim}, SwiGLU "
            f"{m.mlp_dim}; trained at L = {length} for {c.train.num_steps} steps of "
            f"{c.data.batch_size} x {length} tokens, seed {c.train.seed}, lr "
            f"{c.train.learning_rate}, on the stdlib corpus with {c.data.synthetic_share:.0%} of "
            "each batch's rows synthetic passkey documents (`config.data.synthetic_share`). "
            "Config: `configs/experiments/positional_schemes.py:<scheme>`.",
            f"- Held-out loss at the end of training (nats/byte, {c.train.eval_batches} batches at"
            f" L): {loss}.",
            f"- Evaluation: `lcm.eval` perplexity, `truncate` protocol, the first "
            f"{c.eval.num_documents} held-out stdlib packages with more than {max(lengths)} tokens"
            " (same documents at every length), positions from 0.",
            f"- Training-free (on the RoPE checkpoint, factor {FACTOR}): PI = `linear`, NTK = "
            f"`ntk`, YaRN = `yarn` (original length {length}, HF defaults beta_fast 32, "
            f"beta_slow 1), dynamic NTK = `dynamic`; SelfExtend window {length // 2}, group 32 "
            f"(positions up to 16L map below L); LM-Infinite global 10, local {length}, distance"
            f" cap {length}.",
            f"- Fine-tune: {steps} steps at {FACTOR}L = {FACTOR * length} "
            f"({max(c.data.batch_size // FACTOR, 1)} rows, the same tokens per step), lr "
            f"{c.train.learning_rate / 3:g}, from the RoPE checkpoint (`config.train.init_from`),"
            " stdlib only, with PI or YaRN applied during fine-tuning and evaluation. Two "
            f"controls with the same steps and tokens: `rope ft {FACTOR}L` (unscaled RoPE "
            f"fine-tuned at {FACTOR}L) and `rope ft L` (RoPE trained on at L, "
            f"{c.data.batch_size} rows).",
            "",
            "## Perplexity (bytes) by evaluation length",
            "",
            table,
            "",
            f"![perplexity vs length]({png.name})",
            "",
            "## The classic findings, as numbers",
            "",
            *_checks(rows, length),
            "",
            "## Provenance",
            "",
            provenance.markdown(),
            "",
        ]
    )
    return small_runs.write_report(out, work, NAME, text, rows, log)


def parse(argv: list[str]):
    return small_runs.parse_args(
        argv,
        __doc__.split("\n")[0],
        models="positional",
        full_help="larger models, for an accelerator",
    )


if __name__ == "__main__":
    run(parse(sys.argv))
