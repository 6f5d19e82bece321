"""Image and text processors (registered), built from ``vis_processor``/``text_processor`` config."""
