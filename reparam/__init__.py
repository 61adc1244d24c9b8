"""Structural reparameterization: train-time multi-branch blocks -> single-branch inference graphs.

``create_model`` / ``load_model_checkpoint`` (``load.py``) build a model from a checkpoint of either form: a
checkpoint of this project's fully fused model gives the fused model (models never import reparam).
"""

from .load import create_model, load_model_checkpoint
from .registry import register_rule, registered_rules, reparameterize_model

__all__ = [
    "create_model",
    "load_model_checkpoint",
    "register_rule",
    "registered_rules",
    "reparameterize_model",
]
