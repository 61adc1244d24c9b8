"""Rule registry and the reparameterization pass.

A rule maps one train-time module type to an equivalent inference-form module. Rules never mutate
their input; the pass deep-copies the model once, then replaces modules bottom-up so a rule sees
children that are already in inference form. Modules without a rule are left as they are, which
makes the pass idempotent as long as no rule returns a module that a rule matches again.

Rule modules are listed explicitly in ``RULE_MODULES`` (adding one is one line there); they register their
rules with ``@register_rule`` when the pass first needs them, and a second rule for a type raises.
"""

from __future__ import annotations

import copy
import importlib
import logging
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from mobileclip_export.errors import RegistryError

log = logging.getLogger(__name__)

Rule = Callable[[nn.Module], nn.Module]
#: Every module of this package that holds rules (imported on first use: cheap import, no cycles with models).
RULE_MODULES = ("rules", "rules_vit")
_RULES: dict[type[nn.Module], Rule] = {}
M = TypeVar("M", bound=type[nn.Module])


def register_rule(module_type: type[nn.Module]) -> Callable[[Rule], Rule]:
    """Register ``fn(module) -> replacement`` for ``module_type`` (exact type match).

    Raises RegistryError on a duplicate so two rules can never silently compete.
    """

    def deco(fn: Rule) -> Rule:
        if module_type in _RULES:
            raise RegistryError(
                f"a reparameterization rule for {module_type.__name__} is already registered "
                f"({_RULES[module_type].__module__}.{_RULES[module_type].__name__})"
            )
        _RULES[module_type] = fn
        return fn

    return deco


def registered_rules() -> dict[type[nn.Module], Rule]:
    _load_builtin_rules()
    return dict(_RULES)


def _load_builtin_rules() -> None:
    for name in RULE_MODULES:
        importlib.import_module(f"{__package__}.{name}")


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
