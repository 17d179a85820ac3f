"""Training: losses, the synthetic speech–motion corpus and the training loops."""
