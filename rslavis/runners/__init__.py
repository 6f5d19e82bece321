"""Training runners and learning-rate schedulers."""
