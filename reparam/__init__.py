"""Structural reparameterization: train-time multi-branch blocks -> single-branch inference graphs."""

from .registry import register_rule, registered_rules, reparameterize_model

__all__ = ["register_rule", "registered_rules", "reparameterize_model"]
