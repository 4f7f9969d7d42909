"""The config's `model` section through the registry: `arch` from the registered names,
`options` checked against the arch's own schema (errors name the key), feature-study
neurons checked against the layers the arch records."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from mamlscope.config import load_schema, validate_config
from mamlscope.errors import ConfigError
from mamlscope.models import model_names

REPO = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((REPO / "config.yaml").read_text())


def with_model(model: dict, neurons: list | None = None) -> dict:
    """The default config reduced to its mnist5k dataset, with that network."""
    cfg = copy.deepcopy(DEFAULT)
    cfg["datasets"] = {"mnist5k": cfg["datasets"]["mnist5k"]}
    cfg["datasets"]["mnist5k"]["model"] = model
    if neurons is not None:
        cfg["features"] = {"neurons": neurons}
    return cfg


def resolved_model(model: dict) -> dict:
    return validate_config(with_model(model), check_paths=False)["datasets"]["mnist5k"]["model"]


def test_the_arch_enum_is_the_registry() -> None:
    arch = load_schema()["$defs"]["model"]["properties"]["arch"]
    assert arch["enum"] == model_names() and arch["default"] == "fc"
    with pytest.raises(ConfigError, match=r"datasets.mnist5k.model.arch: 'resnet' is not one of"):
        validate_config(with_model({"arch": "resnet"}), check_paths=False)


def test_options_default_to_empty_and_to_the_archs_own_defaults() -> None:
    assert resolved_model({})["options"] == {}
    resnet = resolved_model({"arch": "resnet12"})
    assert resnet["options"] == {"channels": [64, 160, 320, 640]}
    assert resolved_model({"arch": "resnet12", "options": {"channels": [1, 2, 3, 4]}})[
        "options"
    ] == {"channels": [1, 2, 3, 4]}


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (
            {"arch": "resnet12", "options": {"channels": [8, 8, 8]}},
            r"datasets.mnist5k.model.options.channels: \[8, 8, 8\] is too short",
        ),
        (
            {"arch": "resnet12", "options": {"channels": [8, "wide", 8, 8]}},
            r"datasets.mnist5k.model.options.channels.1: 'wide' is not of type 'integer'",
        ),
        (
            {"arch": "fc", "options": {"channels": [8]}},
            r"datasets.mnist5k.model.options: Additional properties .*'channels' was unexpected",
        ),
    ],
)
def test_bad_options_name_the_key(model: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        validate_config(with_model(model), check_paths=False)


def test_neurons_are_checked_against_the_archs_recorded_layers() -> None:
    small = {"arch": "resnet12", "options": {"channels": [2, 3, 4, 5]}}
    ok = [{"layer": "block3", "unit": 3}, {"layer": "pool", "unit": 4}]
    validate_config(with_model(small, ok), check_paths=False)
    with pytest.raises(ConfigError, match=r"unit: 5 is out of range .*'block4'.* 5 units"):
        validate_config(with_model(small, [{"layer": "block4", "unit": 5}]), check_paths=False)
    with pytest.raises(ConfigError, match=r"'conv1' is not a layer .*\['block1', .*'head'\]"):
        validate_config(with_model(small, [{"layer": "conv1", "unit": 0}]), check_paths=False)
    with pytest.raises(ConfigError, match=r"datasets.mnist5k.model: .*at least 16x16"):
        cfg = with_model(small, ok)
        cfg["datasets"]["mnist5k"]["image_size"] = 8
        validate_config(cfg, check_paths=False)


def test_a_flattening_layer_has_the_width_it_outputs() -> None:
    """conv4-maxpool's `flatten` holds filters x 2 x 2 units on 32x32 images (32 -> 2 after
    four max-pools), read from the forward, not taken from the layer before (filters)."""

    def cfg(unit: int) -> dict:
        out = with_model(
            {"arch": "conv4-maxpool", "filters": 3}, [{"layer": "flatten", "unit": unit}]
        )
        out["datasets"]["mnist5k"]["image_size"] = 32
        return out

    validate_config(cfg(11), check_paths=False)
    with pytest.raises(ConfigError, match=r"'flatten' .* 12 units"):
        validate_config(cfg(12), check_paths=False)


def test_a_network_that_cannot_run_on_the_images_stops_the_config_check() -> None:
    """Found before any job (it used to fail in training), with or without neurons."""
    small = copy.deepcopy(DEFAULT)
    small["datasets"]["mnist5k"]["image_size"] = 8
    small["datasets"]["mnist5k"]["model"] = {"arch": "resnet12"}
    with pytest.raises(ConfigError, match=r"datasets.mnist5k.model: resnet12 needs images of at"):
        validate_config(small, check_paths=False)
    small["datasets"]["mnist5k"]["image_size"] = 16  # four 2x2 max-pools fit
    assert validate_config(small, check_paths=False)["datasets"]["mnist5k"]["image_size"] == 16


def test_a_forward_that_fails_on_the_image_shape_is_a_config_error(monkeypatch) -> None:
    """A network whose forward torch refuses on these images (here a Linear sized for
    another image) is named with its dataset, not a traceback from training."""
    import torch
    from torch import nn

    import mamlscope.models as models

    class WrongSize(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(5, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x.flatten(1))  # 784 features into a Linear of 5

    monkeypatch.setattr(models, "build_model", lambda *a, **k: WrongSize())
    with pytest.raises(ConfigError, match=r"datasets.mnist5k.model: the fc network does not run"):
        validate_config(with_model({"arch": "fc"}), check_paths=False)
