"""Long-context evaluation: perplexity vs length, passkey / RULER-style tasks, heatmaps.

``python -m lcm.eval --config configs/<x>.py --workdir DIR [--config.eval.... ]`` (see
``lcm.eval.runner``). Modules: ``perplexity`` (protocols), ``tasks`` (greedy decoding and
log-likelihood over the synthetic task grid; generators live in ``lcm.data.synthetic``),
``scoring`` (RULER / passkey metrics), ``plots`` (PNG), ``runner`` (the whole run).
"""

from lcm.eval.runner import evaluate as evaluate

__all__ = ["evaluate"]
