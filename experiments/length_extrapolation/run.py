"""Length extrapolation of positional schemes: perplexity from L/2 to 16L, trained at L.

    .venv/bin/python -m experiments.length_extrapolation.run            # default: 2-core CPU
    .venv/bin/python -m experiments.length_extrapolation.run --full     # larger, for an accelerator
    .venv/bin/python -m experiments.length_extrapolation.run --toy      # tiny sizes; the smoke test
    .venv/bin/python -m experiments.length_extrapolation.run --from-results  # re-render md + png

1. Trains one small byte-level model per scheme (``experiments/length_extrapolation/configs.py``:
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

Writes ``experiments/length_extrapolation/results/length_extrapolation.{json,md,png}`` (the
JSON: every perplexity, the final losses and the provenance, from which ``--from-results``
re-renders the rest). Models and eval outputs go to ``--workdir`` (default
``workdir/experiments/positional-<setting>``, shared with ``experiments.passkey_depth``, whose
retrieval models live in ``<scheme>_passkey/``; a model already trained there is reused).
``--toy`` and ``--full`` write their results under the workdir unless ``--out`` is given.
"""

from __future__ import annotations

import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from experiments import common
from experiments.length_extrapolation import configs

MODULE = "experiments.length_extrapolation.run"
SCHEMES = configs.SCHEMES
FACTOR = 4  # training-free and fine-tuned extension factor: target length 4L
NAME = "length_extrapolation"
FINE_TUNE_STEPS = {"toy": 2, "default": 100, "full": 500}
# The fine-tunes' labels: PI and YaRN at 4L, and the two controls (unscaled at 4L, more at L).
TUNED = (f"rope+pi{FACTOR} ft", f"rope+yarn{FACTOR} ft", f"rope ft {FACTOR}L", "rope ft L")


def scheme_config(scheme: str, setting: str):
    """The scheme's config in ``setting`` (``configs.get_config("<scheme>,<setting>")``)."""
    config = configs.get_config(f"{scheme},{setting}")
    config.lock()
    return config


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
    return {label: common.override(rope, o) for label, o in variants.items()}


def fine_tune_config(variant, rope_workdir: pathlib.Path, length: int, steps: int, factor=FACTOR):
    """``variant`` (a RoPE config, rescaled or not) trained ``steps`` more steps at
    ``factor * length`` (``factor = 1``: the control, more training at L)."""
    batch = variant.data.batch_size
    return common.override(
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
    """Trains and evaluates every model, writes the raw results, renders; returns the md."""
    setting = args.setting
    log = common.logger(args.quiet)
    provenance = common.Provenance(MODULE, args.argv)
    work, out = pathlib.Path(args.workdir), pathlib.Path(args.out)
    models = {s: scheme_config(s, setting) for s in SCHEMES}
    length = models["rope"].seq_len
    rows, final_loss = {}, {}
    for scheme, config in models.items():
        final_loss[scheme] = common.train(config, work / scheme, log=log).get("eval_loss")
        rows[scheme] = _ppl(common.evaluate(config, work / scheme, scheme, log=log))
    variants = training_free(models["rope"], length)
    for label, config in variants.items():
        rows[label] = _ppl(common.evaluate(config, work / "rope", label, log=log))
    steps = FINE_TUNE_STEPS[setting]
    tuned = {  # label -> (config, workdir name): PI and YaRN at 4L, and the two controls
        f"rope+{m}{FACTOR} ft": (variants[f"rope+{m}{FACTOR}"], f"rope_{m}{FACTOR}_ft", FACTOR)
        for m in ("pi", "yarn")
    }
    tuned[f"rope ft {FACTOR}L"] = (models["rope"], f"rope_{FACTOR}L_ft", FACTOR)  # no scaling
    tuned["rope ft L"] = (models["rope"], "rope_L_ft", 1)  # the same steps at L
    assert tuple(tuned) == TUNED
    for label, (variant, name, factor) in tuned.items():
        config = fine_tune_config(variant, work / "rope", length, steps, factor)
        common.train(config, work / name, log=log)
        eval_config = common.override(config, {"eval.lengths": models["rope"].eval.lengths})
        rows[label] = _ppl(common.evaluate(eval_config, work / name, name, log=log))
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "setting": setting,
        "rows": rows,
        "final_loss": final_loss,
        "provenance": provenance.finish(),
    }
    common.write_json(out / f"{NAME}.json", data)
    md = render(common.read_json(out / f"{NAME}.json"), out)
    log(md.read_text())
    return md


def render(data: dict, out: pathlib.Path) -> pathlib.Path:
    """``<out>/length_extrapolation.{md,png}`` from the raw results; returns the md path."""
    setting = data["setting"]
    rows = {label: {int(n): v for n, v in row.items()} for label, row in data["rows"].items()}
    final_loss = data["final_loss"]
    rope = scheme_config("rope", setting)
    variants = list(training_free(rope, rope.seq_len))
    tuned = TUNED
    steps = FINE_TUNE_STEPS[setting]
    length = rope.seq_len
    lengths = list(rope.eval.lengths)
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
    table = common.markdown_table(
        header, [[label, *[rows[label][n] for n in lengths]] for label in rows]
    )
    c = rope
    m = c.model
    loss = ", ".join(f"{s} {v:.3f}" for s, v in final_loss.items() if v is not None)
    text = "\n".join(
        [
            "# Length extrapolation: perplexity from L/2 to 16L",
            "",
            "Produced by `python -m experiments.length_extrapolation.run` (setting: "
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
            "Config: `experiments/length_extrapolation/configs.py:<scheme>`.",
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
            common.provenance_markdown(data["provenance"]),
            "",
        ]
    )
    md = out / f"{NAME}.md"
    md.write_text(text)
    return md


def parse(argv: list[str]):
    return common.parse_args(
        argv,
        __doc__.split("\n")[0],
        study=NAME,
        models="positional",
        full_help="larger models, for an accelerator",
    )


def main(argv: list[str]) -> pathlib.Path:
    args = parse(argv)
    if args.from_results:
        return render(common.read_json(args.out / f"{NAME}.json"), args.out)
    return run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
