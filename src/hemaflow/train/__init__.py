"""Training loops, losses, schedules and checkpoints."""
