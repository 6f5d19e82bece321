"""Dataset builders (registered), torch datasets per annotation format, synthetic scenes."""
