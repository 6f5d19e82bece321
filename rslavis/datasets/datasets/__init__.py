"""torch Dataset classes per annotation format."""
