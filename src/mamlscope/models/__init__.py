"""The networks of the study, one module per architecture, and a BatchNorm safe for MAML.

* :mod:`~mamlscope.models.registry`: :class:`ModelEntry`, :func:`build_model` and the
  contract every network keeps (a ``head``, recorded layers); plug-in networks.
* ``fc``, ``conv4``, ``conv4_maxpool``, ``resnet12``: the built-in architectures, each a
  module that defines ``MODEL``. Adding one is adding such a module (or an entry point).
* :mod:`~mamlscope.models.batchnorm`: :class:`BatchNorm` and the BatchNorm policy
  (:func:`batch_statistics`, :func:`statistics_from_first`).
* :mod:`~mamlscope.models.layers`: :class:`Network` (an ``nn.Sequential`` with stable
  layer names), :class:`FlattenLinear`, :class:`SpatialMean`.
* :mod:`~mamlscope.models.recording`: layer outputs and ``head``'s input by forward hooks.

Held gates: the ReLU and max-pool layers of the built-in networks are
:class:`mamlscope.gates.ReLU` and :class:`mamlscope.gates.MaxPool2d`, which can replay a
recorded pattern (maml-fd's central differences rely on it; re-exported here with
:func:`record_gates` and :func:`hold_gates`).
"""

from __future__ import annotations

from mamlscope.gates import (
    Gates,
    MaxPool2d,
    ReLU,
    gated_max_pool2d,
    gated_relu,
    hold_gates,
    record_gates,
    unheld_kinks,
)
from mamlscope.models.batchnorm import (
    BatchNorm,
    BatchNorm1d,
    BatchNorm2d,
    batch_norm,
    batch_statistics,
    functional_forward,
    reference_rows,
    statistics_from_first,
)
from mamlscope.models.layers import FlattenLinear, Network, SpatialMean
from mamlscope.models.recording import head_input, layer_outputs, layer_widths
from mamlscope.models.registry import (
    ModelEntry,
    build_model,
    clear_registry,
    first_layer,
    layer_names,
    model_entry,
    model_names,
    normalised_layers,
    options_rules,
    resolve_options,
)

__all__ = [
    "BatchNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "FlattenLinear",
    "Gates",
    "MaxPool2d",
    "ModelEntry",
    "Network",
    "ReLU",
    "SpatialMean",
    "batch_norm",
    "batch_statistics",
    "build_model",
    "clear_registry",
    "first_layer",
    "functional_forward",
    "gated_max_pool2d",
    "gated_relu",
    "head_input",
    "hold_gates",
    "layer_names",
    "layer_outputs",
    "layer_widths",
    "model_entry",
    "model_names",
    "normalised_layers",
    "options_rules",
    "record_gates",
    "reference_rows",
    "resolve_options",
    "statistics_from_first",
    "unheld_kinks",
]
