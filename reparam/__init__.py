"""Structural reparameterization: train-time multi-branch blocks -> single-branch inference graphs."""

from .load import create_model, load_model_checkpoint
from .registry import register_rule, registered_rules, reparameterize_model

__all__ = [
    "create_model",
    "load_model_checkpoint",
    "register_rule",
    "registered_rules",
    "reparameterize_model",
]
