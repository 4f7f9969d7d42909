"""The model registry: every network is one module that registers a :class:`ModelEntry`.

A module of :mod:`mamlscope.models` (``fc``, ``conv4``, ``conv4_maxpool``, ``resnet12``)
defines ``MODEL = ModelEntry(...)``; a user's own package adds a network without editing
mamlscope by declaring an entry point (:func:`mamlscope.plugins.load_registry`)::

    [project.entry-points."mamlscope.models"]
    my-net = "my_package.my_net:MODEL"

Then ``model: {arch: my-net, options: {...}}`` in a config trains, evaluates and studies it.

The contract every built network keeps (:func:`build_model` checks it and says what is
wrong):

* it has a direct child named ``head``, the final ``nn.Linear`` (N-way classifier): the
  baseline's evaluation fits fresh heads on its input (the penultimate features), and
  the layer-freezing analysis adapts it alone (`from head`);
* :attr:`ModelEntry.layers` names the layers the feature studies record, in forward
  order, each a submodule run once per forward, the last being ``head`` and the one before
  it producing ``head``'s input;
* MAML runs it through ``torch.func.functional_call`` (and ``vmap``), so its forward is a
  pure function of parameters, buffers and input; BatchNorm should be
  :class:`mamlscope.models.BatchNorm2d` (exact under ``vmap`` of ``grad``, and obeying
  :func:`mamlscope.models.batch_statistics`).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import jsonschema
from torch import nn

from mamlscope.errors import ConfigError
from mamlscope.models.batchnorm import BatchNorm
from mamlscope.models.layers import positive_int
from mamlscope.plugins import load_registry

GROUP = "mamlscope.models"  # the entry-point group of plug-in models


class Builder(Protocol):
    """``build(in_shape, num_classes, *, running_stats, config) -> nn.Module``.

    ``config`` is the dataset's resolved ``model`` section (``arch``, ``hidden``,
    ``filters`` and ``options`` with the entry's option defaults filled in). The same
    ``torch.manual_seed`` must give the same weights.
    """

    def __call__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        *,
        running_stats: bool,
        config: Mapping[str, Any],
    ) -> nn.Module: ...


def child_names(model: nn.Module) -> list[str]:
    """Names of ``model``'s direct children in forward order (the default recorded layers)."""
    return [name for name, _ in model.named_children()]


@dataclass(frozen=True)
class ModelEntry:
    """One architecture: its name (the config's ``arch``), builder and what studies read.

    ``layers``: the layers the feature studies record, a function of the built model
    (default: its direct children). ``first_layer``: the submodule whose weights the
    filters figure shows (``None``: the first ``Conv2d`` or ``Linear``). ``options_schema``:
    a JSON schema of ``model.options`` (``None``: the model takes no options).
    ``tiny``: ``model``-section keys (``hidden``, ``filters``, ``options``) that make the
    network small enough for a test on 28x28 or 32x32 images in about a second on a CPU
    (``None``: the generic tests skip it).
    """

    name: str
    build: Builder
    description: str = ""
    layers: Callable[[nn.Module], list[str]] = child_names
    first_layer: str | None = None
    options_schema: Mapping[str, Any] | None = None
    tiny: Mapping[str, Any] | None = None


@functools.cache
def _registry() -> dict[str, ModelEntry]:
    return load_registry("mamlscope.models", GROUP, "MODEL", ModelEntry, lambda e: e.name)


def clear_registry() -> None:
    """Forget the loaded entries (tests that install or remove a plug-in call this)."""
    _registry.cache_clear()


def model_names() -> list[str]:
    """Every registered ``arch``: the built-ins, then the plug-ins (the schema's enum)."""
    return list(_registry())


def model_entry(name: str) -> ModelEntry:
    """The entry registered as ``name``; an unknown name is a ConfigError listing them."""
    table = _registry()
    if not isinstance(name, str) or name not in table:
        raise ConfigError(
            f"arch must be one of {list(table)}, got {name!r} (a network of your own: "
            f"register it by an entry point in group {GROUP!r}, see mamlscope.models.registry)"
        )
    return table[name]


def resolve_options(
    arch: str, options: Mapping[str, Any] | None, where: str = "model.options"
) -> dict[str, Any]:
    """``options`` checked against the entry's schema, its defaults filled in.

    Errors name the key as ``{where}.{key}`` (the config passes
    ``datasets.<name>.model.options``) and the options the model takes.
    """
    entry = model_entry(arch)
    given = dict(options or {})
    if entry.options_schema is None:
        if given:
            raise ConfigError(
                f"{where}: arch {arch!r} takes no options, got {sorted(given)}; remove them"
            )
        return {}
    properties = dict(entry.options_schema.get("properties", {}))
    errors = sorted(
        jsonschema.Draft202012Validator(entry.options_schema).iter_errors(given),
        key=lambda e: [str(p) for p in e.absolute_path],
    )
    if errors:
        lines = [f"  {'.'.join([where, *map(str, e.absolute_path)])}: {e.message}" for e in errors]
        raise ConfigError(
            f"invalid options for arch {arch!r} (it takes {sorted(properties)}):\n"
            + "\n".join(lines)
        )
    defaults = {k: copy.deepcopy(p["default"]) for k, p in properties.items() if "default" in p}
    return defaults | given


def options_rules() -> list[dict[str, Any]]:
    """JSON-schema rules that check ``model.options`` against the chosen arch's schema.

    For the config schema's ``$defs/model/allOf``: the validator then names a bad key as
    ``datasets.<name>.model.options.<key>`` and fills in the options' defaults; an arch
    without an options schema takes no options.
    """
    none: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
    return [
        {
            "if": {"required": ["arch"], "properties": {"arch": {"const": name}}},
            "then": {"properties": {"options": dict(entry.options_schema or none)}},
        }
        for name, entry in _registry().items()
    ]


def build_model(
    arch: str,
    in_shape: tuple[int, int, int],
    num_classes: int,
    *,
    hidden: list[int] | None = None,
    filters: int | None = None,
    running_stats: bool = False,
    options: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build the registered network ``arch``; the same ``torch.manual_seed``, the same weights.

    ``in_shape`` is ``(channels, height, width)``. ``running_stats=True`` makes BatchNorm
    track running statistics (the baseline); MAML models use ``False`` (batch statistics
    always). ``hidden`` (fc), ``filters`` (conv4) and ``options`` (checked against the
    entry's schema) are the config's ``model`` keys; each architecture reads its own. The
    result has ``arch`` set to the entry's name and keeps the module docstring's contract.
    """
    entry = model_entry(arch)
    if len(in_shape) != 3:
        raise ConfigError(f"in_shape must be (channels, height, width), got {in_shape!r}")
    for key, value in zip(("channels", "height", "width"), in_shape, strict=True):
        positive_int(value, f"in_shape {key}")
    channels, height, width = in_shape  # a tuple for the builder even when given a list
    positive_int(num_classes, "num_classes")
    config = {
        "arch": arch,
        "hidden": None if hidden is None else list(hidden),
        "filters": filters,
        "options": resolve_options(arch, options),
    }
    model = entry.build(
        (channels, height, width), num_classes, running_stats=running_stats, config=config
    )
    _check_contract(entry, model)
    model.arch = entry.name  # type: ignore[assignment]  # torch's stub: only Tensor | Module
    return model


def _check_contract(entry: ModelEntry, model: object) -> None:
    """The module docstring's contract, checked on a freshly built ``model``."""
    where = f"model {entry.name!r}"
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{where}: its builder returned {type(model).__name__}, not nn.Module")
    head = dict(model.named_children()).get("head")
    if not isinstance(head, nn.Linear):
        raise ConfigError(
            f"{where} has no direct child 'head' that is an nn.Linear (its children: "
            f"{child_names(model)}); name the final classifier layer 'head'"
        )
    layers = entry.layers(model)
    modules = dict(model.named_modules())
    unknown = [name for name in layers if not name or name not in modules]  # "": the root
    if unknown or not layers or layers[-1] != "head" or len(set(layers)) != len(layers):
        raise ConfigError(
            f"{where}: its recorded layers {layers} must be distinct submodule names in "
            f"forward order ending with 'head'"
            + (f"; {unknown} are not submodules" if unknown else "")
        )
    if entry.first_layer is not None:
        weight = getattr(modules.get(entry.first_layer), "weight", None)
        if weight is None or weight.dim() not in (2, 4):
            raise ConfigError(
                f"{where}: first_layer {entry.first_layer!r} is not a submodule with a "
                "Linear or Conv2d weight; name the first such layer"
            )


def entry_of(model: nn.Module) -> ModelEntry | None:
    """The entry ``model`` was built from (its ``arch``), or ``None`` for another module."""
    arch = getattr(model, "arch", None)
    return _registry().get(arch) if isinstance(arch, str) else None


def layer_names(model: nn.Module) -> list[str]:
    """The layers the feature studies record, in forward order (valid ``get_submodule``
    keys): the entry's :attr:`ModelEntry.layers`, or the direct children of a module not
    built by :func:`build_model`."""
    entry = entry_of(model)
    return list(entry.layers(model)) if entry is not None else child_names(model)


def first_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """``(name, module)`` of the layer whose weights the filters figure shows."""
    entry = entry_of(model)
    if entry is not None and entry.first_layer is not None:
        return entry.first_layer, model.get_submodule(entry.first_layer)
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            return name, module
    raise ConfigError(f"{type(model).__name__} has no Conv2d or Linear layer to show")


def is_normalisation(module: nn.Module) -> bool:
    """Whether ``module`` is or contains a BatchNorm (ours or torch's)."""
    kinds = (BatchNorm, nn.modules.batchnorm._BatchNorm)
    return any(isinstance(m, kinds) for m in module.modules())


def normalised_layers(model: nn.Module, names: Sequence[str] | None = None) -> list[str]:
    """Of ``names`` (default: the recorded layers), those that are or contain a BatchNorm."""
    names = layer_names(model) if names is None else list(names)
    return [name for name in names if is_normalisation(model.get_submodule(name))]
