"""Registry, config, logging, checkpoint I/O, distributed helpers and errors."""
