"""The config is validated before any job runs, and each error names its key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from mamlscope.config import data_section, load_config, validate_config
from mamlscope.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

MINIMAL = {
    "datasets": {
        "d": {
            "source": "mnist5k",
            "split": {"protocol": "examples"},
            "episodes": {"way": 5, "shot": 1},
        }
    }
}


def config_with(**dataset_keys):
    cfg = copy.deepcopy(MINIMAL)
    cfg["datasets"]["d"].update(dataset_keys)
    return cfg


def test_default_config_is_valid_and_filled():
    cfg = load_config(REPO / "config.yaml")
    ds = cfg["datasets"]["mnist5k"]
    assert ds["episodes"]["query"] == 15
    assert ds["model"]["arch"] == "fc"
    assert ds["baseline"]["lr"] == pytest.approx(1e-3)
    assert cfg["seeds"] == [0, 1]


SHIPPED = [p for p in sorted((REPO / "config").glob("*.yaml")) if p.name != "schema.yaml"]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_is_valid(path):
    load_config(path, check_paths=False)


def test_defaults_are_filled():
    cfg = validate_config(MINIMAL)
    ds = cfg["datasets"]["d"]
    assert ds["image_size"] == 28 and ds["channels"] == 1
    assert ds["split"]["train"] == pytest.approx(0.6)
    assert cfg["maml"]["inner_steps"] == 1


def test_input_is_not_modified():
    cfg = copy.deepcopy(MINIMAL)
    validate_config(cfg)
    assert cfg == MINIMAL


def test_dataset_overrides_only_what_it_names():
    cfg = copy.deepcopy(MINIMAL)
    cfg["maml"] = {"inner_lr": 0.1, "meta_steps": 10}
    cfg["datasets"]["d"]["maml"] = {"meta_steps": 3}
    out = validate_config(cfg)["datasets"]["d"]["maml"]
    assert out["inner_lr"] == pytest.approx(0.1)
    assert out["meta_steps"] == 3
    assert out["meta_batch"] == 32


@pytest.mark.parametrize(
    ("cfg", "fragment"),
    [
        (config_with(colour="blue"), "datasets.d: Additional properties are not allowed ('colour'"),
        (config_with(source="imagenet"), "datasets.d.source"),
        (config_with(episodes={"way": 11, "shot": 1}), "datasets.d.episodes.way"),
        (config_with(episodes={"way": 5}), "'shot' is a required property"),
        (config_with(split={"protocol": "examples", "train": 0.7, "val": 0.3}), "datasets.d.split"),
        (config_with(split={"protocol": "classes", "train": 2.5}), "datasets.d.split.train"),
        (config_with(split={"protocol": "classes"}), "datasets.d.split.train"),
        (config_with(split={"protocol": "classes", "train": 8, "val": 2}), "leave no test"),
        (config_with(source="imagefolder"), "datasets.d.path"),
        (config_with(normalize={"mean": [0, 0], "std": [1]}), "datasets.d.normalize.mean"),
        ({"datasets": {}, "seeds": [0]}, "datasets"),
        ({**MINIMAL, "methods": ["reptile"]}, "methods.0"),
        ({**MINIMAL, "device": "gpu"}, "device"),
    ],
)
def test_bad_config_names_the_key(cfg, fragment):
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    assert fragment in str(info.value)


def test_missing_local_path_is_reported(tmp_path):
    cfg = config_with(source="mnist", root=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(ConfigError, match=r"datasets\.d\.root: path does not exist"):
        validate_config(cfg)
    cfg = config_with(test_images=str(tmp_path / "t10k"))
    with pytest.raises(ConfigError, match=r"datasets\.d\.test_images"):
        validate_config(cfg)


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text(yaml.safe_dump(["a", "list"]))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_data_section_ignores_training_keys():
    ds = validate_config(MINIMAL)["datasets"]["d"]
    section = data_section(ds)
    assert "episodes" not in section and "maml" not in section
    assert section["source"] == "mnist5k"


def test_seeds_given_as_strings_on_the_command_line_become_integers():
    assert validate_config({**MINIMAL, "seeds": ["0", "7"]})["seeds"] == [0, 7]
    with pytest.raises(ConfigError, match="seeds.0"):
        validate_config({**MINIMAL, "seeds": ["zero"]})
