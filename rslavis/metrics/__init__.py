"""Caption, object-level and VQA metrics."""
