"""Training engine: loop, losses, optimiser schedule, checkpoints, distributed set-up."""
