"""Registered dataset builders, one module per dataset family."""
