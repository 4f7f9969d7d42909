"""The config is validated before any job runs, and each error names its key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from mamlscope.config import data_section, load_config, load_schema, validate_config
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


# ------------------------------------------- episodes against the pools, before any job


def classes_split(train: int, val: int = 0) -> dict:
    return {"protocol": "classes", "train": train, "val": val}


@pytest.mark.parametrize(
    ("dataset", "fragments"),
    [
        # protocol classes: way against the classes of each pool
        (
            dict(source="digits", split=classes_split(6, 2), episodes={"way": 3, "shot": 1}),
            ["datasets.d.episodes.way", "pool 'val'", "only 2 classes", "datasets.d.split"],
        ),
        (
            dict(source="digits", split=classes_split(7), episodes={"way": 4, "shot": 1}),
            ["datasets.d.episodes.way", "pool 'test'", "only 3 classes"],
        ),
        (
            dict(source="mnist", split=classes_split(3), episodes={"way": 5, "shot": 1}),
            ["datasets.d.episodes.way", "pool 'train'", "only 3 classes"],
        ),
        # protocol classes: shot + query against the examples of the smallest class
        (
            dict(
                source="digits",
                split=classes_split(5, 2),
                episodes={"way": 2, "shot": 160, "query": 15},
            ),
            ["datasets.d.episodes.shot + datasets.d.episodes.query", "175", "only 174"],
        ),
        (
            dict(source="mnist5k", split=classes_split(5), episodes={"way": 2, "shot": 490}),
            ["datasets.d.episodes.shot", "505", "only 500"],
        ),
        (
            dict(source="omniglot", split=classes_split(10), episodes={"way": 5, "shot": 6}),
            ["datasets.d.episodes.query", "21", "only 20"],
        ),
        # protocol examples: shot + query against each pool's share of a class
        (
            dict(
                source="digits",
                split={"protocol": "examples"},
                episodes={"way": 5, "shot": 20, "query": 16},
            ),
            ["datasets.d.episodes.shot", "36", "only 35 in pool 'val'", "split.train = 0.6"],
        ),
        (
            dict(
                source="omniglot",
                split={"protocol": "examples"},
                episodes={"way": 5, "shot": 1, "query": 4},
            ),
            ["datasets.d.episodes.query", "only 4 in pool 'val'"],
        ),
        (
            dict(
                source="mnist",
                split={"protocol": "examples", "test_origin": "test"},
                episodes={"way": 5, "shot": 800, "query": 100},
            ),
            ["datasets.d.episodes.shot", "origin 'test'", "only 892 in pool 'test'"],
        ),
        (
            dict(
                source="digits",
                rotations=True,
                split={"protocol": "examples"},
                episodes={"way": 41, "shot": 1},
            ),
            ["datasets.d.episodes.way", "only 40 classes"],
        ),
    ],
)
def test_episodes_that_cannot_fit_a_pool_fail_before_any_job(dataset, fragments):
    with pytest.raises(ConfigError) as info:
        validate_config({"datasets": {"d": dataset}}, check_paths=False)
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize(
    "dataset",
    [
        # largest that fit: 174 examples in digits' smallest class, 20 Omniglot drawings
        dict(source="digits", split=classes_split(5, 2), episodes={"way": 2, "shot": 159}),
        dict(source="omniglot", split=classes_split(10), episodes={"way": 5, "shot": 5}),
        dict(source="digits", split={"protocol": "examples"}, episodes={"way": 5, "shot": 20}),
        # rotations: 2 val base classes are 8 classes
        dict(
            source="digits",
            rotations=True,
            split=classes_split(6, 2),
            episodes={"way": 8, "shot": 1},
        ),
        # no val pool: no val episodes to fit
        dict(source="digits", split=classes_split(6), episodes={"way": 4, "shot": 1}),
        dict(
            source="digits",
            split={"protocol": "examples", "val": 0},
            episodes={"way": 5, "shot": 1},
        ),
        # mnist5k with the official test set: 500 + 892 in the smallest class
        dict(
            source="mnist5k",
            test_images="t10k",
            split=classes_split(5),
            episodes={"way": 2, "shot": 600},
        ),
        # unknown counts are left to the split job
        dict(
            source="imagefolder",
            path="x",
            split=classes_split(3),
            episodes={"way": 50, "shot": 500},
        ),
        dict(
            source="omniglot",
            sets=["images_custom"],
            split=classes_split(10),
            episodes={"way": 60, "shot": 1, "query": 4},
        ),
    ],
)
def test_episodes_that_fit_pass(dataset):
    validate_config({"datasets": {"d": dataset}}, check_paths=False)


def test_split_defaults_come_from_the_schema():
    classes = validate_config(config_with(split={"protocol": "classes", "train": 5}))
    assert classes["datasets"]["d"]["split"]["val"] == 0
    examples = validate_config(MINIMAL)["datasets"]["d"]["split"]
    assert (examples["train"], examples["val"]) == (pytest.approx(0.6), pytest.approx(0.2))
    split = load_schema()["$defs"]["dataset"]["properties"]["split"]
    assert split["then"]["properties"]["val"]["default"] == pytest.approx(0.2)


def test_normalisation_check_is_one_rule_with_one_message(tmp_path):
    import torch

    from mamlscope.data.prepared import prepare_dataset
    from mamlscope.data.tasks import normalize_batch

    bad = {"mean": [0.1, 0.2], "std": [1.0]}
    expected = "normalize.mean: 2 values for 3 channel(s); give one value or one per channel"
    with pytest.raises(ConfigError) as config_err:
        validate_config(config_with(channels=3, normalize=bad))
    with pytest.raises(ConfigError) as prepare_err:
        prepare_dataset("d", {"source": "digits", "channels": 3, "normalize": bad}, tmp_path)
    with pytest.raises(ConfigError) as tasks_err:
        normalize_batch(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), bad["mean"], bad["std"])
    assert str(config_err.value) == str(prepare_err.value) == "datasets.d." + expected
    assert str(tasks_err.value) == expected


@pytest.mark.parametrize(
    ("neurons", "message"),
    [
        (
            [{"layer": "bn7", "unit": 0}],
            r"features.neurons.0.layer: 'bn7' is not a layer .*'relu4'",
        ),
        (
            [{"layer": "bn3", "unit": 0}, {"layer": "bn4", "unit": 64}],
            r"neurons.1.unit: 64 .* 64 units",
        ),
    ],
)
def test_feature_neurons_must_exist_in_the_network(neurons, message):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["features"] = {"neurons": neurons}
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)


def test_feature_neurons_default_to_the_last_two_batchnorm_layers():
    from mamlscope.features.plots import chosen_neurons
    from mamlscope.models import build_model

    cfg = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    assert cfg["features"]["neurons"] is None
    model = build_model("conv4", (1, 28, 28), 5)
    assert chosen_neurons(model, None) == [{"layer": "bn3", "unit": 0}, {"layer": "bn4", "unit": 0}]
    small = build_model("fc", (1, 8, 8), 5, hidden=[16])
    assert chosen_neurons(small, None) == [{"layer": "bn1", "unit": 0}]
