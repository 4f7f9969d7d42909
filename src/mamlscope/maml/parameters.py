"""Which parameters the inner loop adapts: by part of the network, or from a layer on.

ANIL (Raghu et al. 2020) adapts only the head, BOIL (Oh et al. 2021) only the body, and a
layer-freezing ablation adapts the layers at or above some depth. Each is the one inner
loop told a set of parameter names (``adapted`` of :func:`mamlscope.maml.meta_step`);
these helpers make that set from a model so that no caller spells names by hand.
"""

from __future__ import annotations

from collections.abc import Collection

from torch import nn

from mamlscope.errors import ConfigError

SELECTIONS = ("all", "head", "body")


def _child_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_children()]


def _child_parameters(model: nn.Module, child: str) -> frozenset[str]:
    return frozenset(f"{child}.{n}" for n, _ in model.get_submodule(child).named_parameters())


def _require_child(model: nn.Module, child: str, key: str) -> None:
    names = _child_names(model)
    if child not in names:
        raise ConfigError(
            f"{key} {child!r} is not a direct child of the {type(model).__name__}; "
            f"use one of its children {names}"
        )


def select_parameters(model: nn.Module, which: str, head: str = "head") -> frozenset[str]:
    """Parameter names of ``which`` part: ``"all"``, ``"head"`` (the parameters of the
    direct child named ``head``) or ``"body"`` (every other parameter)."""
    if which not in SELECTIONS:
        raise ConfigError(f"which must be one of {list(SELECTIONS)}, got {which!r}")
    every = frozenset(n for n, _ in model.named_parameters())
    if which == "all":
        return every
    _require_child(model, head, "head")
    in_head = _child_parameters(model, head)
    return in_head if which == "head" else every - in_head


def parameters_from(model: nn.Module, layer: str) -> frozenset[str]:
    """Parameter names of the direct child ``layer`` and of every child after it in
    ``named_children()`` order: "adapt only the layers at or above ``layer``"."""
    _require_child(model, layer, "layer")
    names = _child_names(model)
    later = names[names.index(layer) :]
    return frozenset().union(*(_child_parameters(model, child) for child in later))


def resolve_adapted(model: nn.Module, adapted: Collection[str] | None) -> frozenset[str] | None:
    """``adapted`` checked against ``model``'s parameter names; None when it names them all
    (the full inner loop, bit for bit), else the set. Unknown names are a ConfigError."""
    if adapted is None:
        return None
    if isinstance(adapted, str):
        raise ConfigError(
            f"adapted must be a collection of parameter names, got the string {adapted!r}; "
            "wrap a single name in a set: adapted={'head.weight'}"
        )
    every = [n for n, _ in model.named_parameters()]
    chosen = frozenset(adapted)
    unknown = sorted(chosen.difference(every))
    if unknown:
        raise ConfigError(
            f"adapted names {unknown} that are not parameters of the {type(model).__name__} "
            f"(it has {every[:6]}{' ...' if len(every) > 6 else ''}); build the set with "
            "mamlscope.maml.select_parameters(model, 'head') or parameters_from(model, layer)"
        )
    return None if chosen.issuperset(every) else chosen
