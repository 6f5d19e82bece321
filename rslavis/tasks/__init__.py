"""Tasks: how a model trains on a batch and how its outputs are evaluated."""
