"""Long-context evaluation: perplexity vs length, passkey / RULER-style tasks, heatmaps.

``python -m lcm.eval --config configs/<x>.py --workdir DIR [--config.eval.... ]`` (see
``lcm.eval.runner``). Modules: ``perplexity`` (protocols), ``tasks`` (greedy decoding and
log-likelihood over the synthetic task grid; generators live in ``lcm.data.synthetic``),
``scoring`` (RULER / passkey metrics), ``plots`` (PNG), ``runner`` (the whole run:
``runner.evaluate``), ``checks`` (``config.eval``). The package imports none of them, so
``lcm.config`` can import ``lcm.eval.checks`` without the runner (which imports ``lcm.config``).
"""
