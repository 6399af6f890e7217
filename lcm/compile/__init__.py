"""Ahead-of-time compilation for TPU slices from any host (``python -m lcm.compile``)."""
