"""The model registry, generically: every registered network with `tiny` options passes the
checks of `model_checks.py`, and so does a network of a user's own package registered by
an entry point, which also runs through training, evaluation and the feature studies."""

from __future__ import annotations

import copy
import sys

import model_checks as checks
import numpy as np
import pandas as pd
import pytest
import torch
from plugin_tools import forget_package, install_distribution

from mamlscope.errors import ConfigError
from mamlscope.models import (
    ModelEntry,
    build_model,
    clear_registry,
    layer_names,
    model_entry,
    model_names,
    options_rules,
)

TINY = [name for name in model_names() if model_entry(name).tiny is not None]


def test_the_built_in_networks_are_registered_with_tiny_options() -> None:
    assert {"fc", "conv4", "conv4-maxpool", "resnet12"} <= set(TINY)


@pytest.mark.parametrize("in_shape", checks.SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", TINY)
def test_builds_and_classifies(name: str, in_shape) -> None:
    checks.check_builds_and_classifies(name, in_shape)


@pytest.mark.parametrize("name", TINY)
def test_same_seed_gives_the_same_weights(name: str) -> None:
    checks.check_same_seed_same_weights(name)


@pytest.mark.parametrize("name", TINY)
def test_checkpoint_round_trip(name: str, tmp_path) -> None:
    checks.check_checkpoint_round_trip(name, tmp_path / "model.pt")


@pytest.mark.parametrize("name", TINY)
def test_recorded_layers_exist_and_each_records_an_activation(name: str) -> None:
    checks.check_recorded_layers(name)


@pytest.mark.parametrize("name", TINY)
def test_first_order_meta_step_and_adaptation_run(name: str) -> None:
    checks.check_maml_runs(name)


@pytest.mark.parametrize("name", TINY)
def test_feature_studies_walk_its_layers(name: str) -> None:
    checks.check_feature_studies(name)


@pytest.mark.parametrize("name", model_names())
def test_every_options_schema_is_a_valid_schema_and_its_tiny_options_pass(name: str) -> None:
    import jsonschema

    entry = model_entry(name)
    if entry.options_schema is not None:
        jsonschema.Draft202012Validator.check_schema(entry.options_schema)
    rules = {rule["if"]["properties"]["arch"]["const"]: rule for rule in options_rules()}
    options = dict((entry.tiny or {}).get("options", {}))
    validator = jsonschema.Draft202012Validator(rules[name]["then"])
    assert not list(validator.iter_errors({"arch": name, "options": options}))


# --- a network of the user's own package --------------------------------------------------

PLUGIN = '''
"""A user's network: not an nn.Sequential, torch's own ReLU, one option."""
from torch import nn

from mamlscope.models import BatchNorm2d, ModelEntry, SpatialMean


class TinyNet(nn.Module):
    def __init__(self, in_shape, num_classes, width, running_stats):
        super().__init__()
        self.conv = nn.Conv2d(in_shape[0], width, 3, padding=1)
        self.bn = BatchNorm2d(width, track_running_stats=running_stats)
        self.relu = nn.ReLU()
        self.pool = SpatialMean()
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.pool(self.relu(self.bn(self.conv(x)))))


def build(in_shape, num_classes, *, running_stats, config):
    return TinyNet(in_shape, num_classes, config["options"]["width"], running_stats)


MODEL = ModelEntry(
    name="tiny-net",
    build=build,
    options_schema={
        "type": "object",
        "additionalProperties": False,
        "properties": {"width": {"type": "integer", "minimum": 1, "default": 6}},
    },
    tiny={"options": {"width": 4}},
)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """``my_nets.tiny_net`` installed with an entry point in group ``mamlscope.models``."""
    package = tmp_path / "my_nets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tiny_net.py").write_text(PLUGIN)
    install_distribution(
        tmp_path, "my-nets", "[mamlscope.models]\ntiny-net = my_nets.tiny_net:MODEL\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    clear_registry()
    yield "tiny-net"
    forget_package("my_nets")
    monkeypatch.undo()
    clear_registry()


def test_a_plugged_network_passes_every_generic_check(plugin, tmp_path) -> None:
    assert plugin in model_names()
    assert model_names()[: len(TINY)] == TINY  # the built-ins first
    for in_shape in checks.SHAPES:
        checks.check_builds_and_classifies(plugin, in_shape)
    checks.check_same_seed_same_weights(plugin)
    checks.check_checkpoint_round_trip(plugin, tmp_path / "model.pt")
    checks.check_recorded_layers(plugin)
    checks.check_maml_runs(plugin)
    checks.check_feature_studies(plugin)
    assert build_model(plugin, (1, 8, 8), 3).conv.out_channels == 6  # its option's default


def test_a_plugged_network_with_the_name_of_a_built_in_is_refused(tmp_path, monkeypatch):
    (tmp_path / "clash_nets.py").write_text(
        "from mamlscope.models import ModelEntry\n"
        "from mamlscope.models.conv4 import build\n"
        "MODEL = ModelEntry(name='fc', build=build)\n"
    )
    install_distribution(tmp_path, "clash", "[mamlscope.models]\nmine = clash_nets\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    clear_registry()
    try:
        with pytest.raises(ConfigError, match=r"two entries are named 'fc'.*entry point 'mine'"):
            model_names()
    finally:
        sys.modules.pop("clash_nets", None)
        monkeypatch.undo()
        clear_registry()


@pytest.mark.slow
def test_a_plugged_network_trains_evaluates_and_is_studied(plugin, tiny_digits, tmp_path):
    """The jobs of the pipeline, on the plug-in's network, without editing mamlscope."""
    from mamlscope.evaluate import EvalSettings, run_evaluation
    from mamlscope.features.extract import extract_activations, write_probe
    from mamlscope.features.plots import plot_model_features
    from mamlscope.features.studies import study_keys
    from mamlscope.train import run_training

    cfg = copy.deepcopy(tiny_digits["cfg"])
    cfg["model"] = {"arch": plugin, "hidden": [8], "filters": None, "options": {"width": 4}}
    cfg["maml"]["meta_steps"] = 4
    files = {k: tiny_digits[k] for k in ("images", "index", "meta")}
    probe = write_probe(files["index"], tiny_digits["pools"], images=20, seed=0, out=tmp_path / "p")
    features = {"neurons": None, "extremes": 2, "saliency_images": 3, "maximise_steps": 2}
    for method in ("baseline", "fomaml"):
        out = tmp_path / method
        run_training(
            **files,
            pools=tiny_digits["pools"],
            val_episodes=tiny_digits["val_episodes"],
            config=cfg,
            method=method,
            seed=0,
            device="cpu",
            checkpoint=out / "model.pt",
            metrics=out / "metrics.parquet",
            progress=False,
        )
        settings = EvalSettings.from_config(cfg, method)
        row = run_evaluation(
            checkpoint=out / "model.pt",
            **files,
            pools=tiny_digits["pools"],
            test_episodes=tiny_digits["test_episodes"],
            settings=settings,
            dataset="digits8",
            device="cpu",
            summary_json=out / "evaluation.json",
            summary_parquet=out / "evaluation.parquet",
        )
        assert 0.0 <= row["mean"] <= 1.0
        frame = extract_activations(
            checkpoint=out / "model.pt",
            **files,
            probe=tmp_path / "p",
            test_episodes=tiny_digits["test_episodes"],
            settings=settings,
            adapt_episodes=2,
            device="cpu",
            out=out / "activations.parquet",
        )
        layers = layer_names(build_model(plugin, (1, 8, 8), 5, options={"width": 4}))
        assert list(dict.fromkeys(frame["layer"])) == layers
        probe_rows = frame[(frame["episode"] == -1) & (frame["layer"] == "pool")]
        assert len(probe_rows) == len(probe) and np.stack(probe_rows["values"]).shape[1] == 4
        pngs = {name: out / f"{name}.png" for name in study_keys()}
        plot_model_features(
            checkpoint=out / "model.pt",
            **files,
            probe=tmp_path / "p",
            activations=out / "activations.parquet",
            metrics=out / "metrics.parquet",
            features=features,
            title=f"digits8 · {method}",
            out=pngs,
        )
        assert all(path.stat().st_size > 0 for path in pngs.values())
        assert isinstance(pd.read_parquet(out / "metrics.parquet"), pd.DataFrame)


def test_contract_violations_are_clear_errors(monkeypatch) -> None:
    """A builder without `head`, or recorded layers that are not submodules, is refused."""
    from mamlscope.models import registry

    no_head = ModelEntry("no-head", lambda *a, **k: torch.nn.Sequential(torch.nn.Flatten()))
    bad_layers = ModelEntry(
        "bad-layers",
        lambda shape, n, **k: torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(shape[0] * shape[1] * shape[2], n)
        ),
        layers=lambda model: ["body", "head"],
    )
    table = {**registry._registry(), "no-head": no_head, "bad-layers": bad_layers}
    monkeypatch.setattr(registry, "_registry", lambda: table)
    with pytest.raises(ConfigError, match=r"no direct child 'head'.*name the final"):
        build_model("no-head", (1, 4, 4), 3)
    with pytest.raises(ConfigError, match=r"no direct child 'head'"):
        build_model("bad-layers", (1, 4, 4), 3)  # children named '0', '1'
    bad_layers_named = ModelEntry(
        "bad-layers",
        lambda shape, n, **k: torch.nn.Sequential(
            __import__("collections").OrderedDict(
                flat=torch.nn.Flatten(), head=torch.nn.Linear(shape[0] * shape[1] * shape[2], n)
            )
        ),
        layers=lambda model: ["body", "head"],
    )
    table["bad-layers"] = bad_layers_named
    with pytest.raises(ConfigError, match=r"\['body'\] are not submodules"):
        build_model("bad-layers", (1, 4, 4), 3)
