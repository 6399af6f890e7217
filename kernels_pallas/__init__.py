"""Pallas attention kernels (TPU first, interpret mode on CPU). Imports only jax and numpy."""
