"""Architectures, targets' losses, post-processing and the training loop, in plain PyTorch."""
