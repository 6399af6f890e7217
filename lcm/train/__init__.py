"""Training: state, optimizer, jitted step, checkpoints, metrics, the loop and its CLI."""
