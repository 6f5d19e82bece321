"""Rewards for SCST and loss terms; each module registers one with ``register_reward``."""
