"""Training: the loop, its command and the checkpoint and profiling commands around it."""
