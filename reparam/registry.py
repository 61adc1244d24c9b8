"""Rule registry and the reparameterization pass.

A rule maps one train-time module type to an equivalent inference-form module. Rules never mutate
their input; the pass deep-copies the model once, then replaces modules bottom-up so a rule sees
children that are already in inference form. Modules without a rule are left as they are, which
makes the pass idempotent as long as no rule returns a module that a rule matches again.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import TypeVar

from torch import nn

log = logging.getLogger(__name__)

Rule = Callable[[nn.Module], nn.Module]
_RULES: dict[type[nn.Module], Rule] = {}
M = TypeVar("M", bound=type[nn.Module])


def register_rule(module_type: type[nn.Module]) -> Callable[[Rule], Rule]:
    """Register ``fn(module) -> replacement`` for ``module_type`` (exact type match).

    Raises ValueError on a duplicate so two rules can never silently compete.
    """

    def deco(fn: Rule) -> Rule:
        if module_type in _RULES:
            raise ValueError(f"a reparameterization rule for {module_type.__name__} is already registered")
        _RULES[module_type] = fn
        return fn

    return deco


def registered_rules() -> dict[type[nn.Module], Rule]:
    _load_builtin_rules()
    return dict(_RULES)


def _load_builtin_rules() -> None:
    # Rules live next to the math in reparam/rules*.py and models' own rule modules; importing
    # them registers them. Imported lazily to keep `mobileclip_export.reparam` cheap and cycle-free.
    from . import rules, rules_vit  # noqa: F401


def _replace(module: nn.Module) -> nn.Module:
    for name, child in list(module.named_children()):
        new_child = _replace(child)
        if new_child is not child:
            setattr(module, name, new_child)
    rule = _RULES.get(type(module))
    return rule(module) if rule is not None else module


def reparameterize_model(model: nn.Module) -> nn.Module:
    """Return a new model in single-branch inference form; ``model`` itself is not modified.

    The copy is put in eval mode first: fusion uses BatchNorm running statistics.
    """
    _load_builtin_rules()
    new = copy.deepcopy(model).eval()
    new = _replace(new)
    return new.eval()
