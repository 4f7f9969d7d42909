"""A user's own package plugs a method and a network into the workflow, editing nothing.

The package is a folder on ``PYTHONPATH`` with a ``.dist-info`` that declares its entry
points (what ``pip install`` of a package with ``[project.entry-points."mamlscope.methods"]``
and ``"mamlscope.models"`` writes), so every Snakemake job finds it as an installed
distribution. The tiny experiment then runs for real: training, evaluation, the feature
studies and the report, with the plug-in method beside the built-in baseline.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from plugin_tools import install_distribution
from workflow_tools import TINY, TINY_RESULTS, copy_workflow, snakemake

# A network of torch's own layers (BatchNorm, ReLU, max-pool), not an nn.Sequential.
MODEL = """
from torch import nn

from mamlscope.models import ModelEntry


class ConvPool(nn.Module):
    def __init__(self, in_shape, num_classes, width, running_stats):
        super().__init__()
        self.conv = nn.Conv2d(in_shape[0], width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width, track_running_stats=running_stats)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flat = nn.Flatten()
        self.head = nn.Linear(width * (in_shape[1] // 2) * (in_shape[2] // 2), num_classes)

    def forward(self, x):
        return self.head(self.flat(self.pool(self.relu(self.bn(self.conv(x))))))


def build(in_shape, num_classes, *, running_stats, config):
    return ConvPool(in_shape, num_classes, config["options"]["width"], running_stats)


MODEL = ModelEntry(
    name="conv-pool",
    build=build,
    description="one conv block of torch's own layers",
    options_schema={
        "type": "object",
        "additionalProperties": False,
        "properties": {"width": {"type": "integer", "minimum": 1, "default": 8}},
    },
)
"""
# Finite-difference MAML whose inner loop adapts only the head.
METHOD = """
from mamlscope.methods.base import META_TRAIN_KEYS, Method

METHOD = Method(
    name="fd-head",
    label="fd-head",
    position=90,
    description="finite-difference MAML adapting only the head",
    order="finite-difference",
    adapts="head",
    train_keys=(*META_TRAIN_KEYS, "maml.fd_epsilon"),
)
"""
ENTRY_POINTS = """
[mamlscope.methods]
fd-head = my_study.method:METHOD

[mamlscope.models]
conv-pool = my_study.model:MODEL
"""


def install_plugin(root: Path) -> Path:
    """``my_study`` with its entry points, as an installed distribution under ``root``."""
    package = root / "my_study"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "model.py").write_text(MODEL)
    (package / "method.py").write_text(METHOD)
    install_distribution(root, "my-study", ENTRY_POINTS)
    return root


def plugin_config() -> str:
    """tests/tiny.yaml with the plug-in method beside the baseline, on the plug-in network."""
    config = yaml.safe_load(TINY)
    config["methods"] = ["baseline", "fd-head"]
    config["model"] = {"arch": "conv-pool", "options": {"width": 6}}
    del config["features"]["neurons"]  # the fc net's; the default picks the network's own
    return yaml.safe_dump(config)


@pytest.mark.workflow
@pytest.mark.slow
def test_a_plug_in_method_and_network_run_through_the_whole_workflow(tmp_path: Path):
    (tmp_path / "workflow").mkdir()
    folder = copy_workflow(tmp_path / "workflow")
    site = install_plugin(tmp_path / "site")
    (folder / "plugin.yaml").write_text(plugin_config())
    env = {"PYTHONPATH": str(site)}
    result = snakemake("--cores", "2", "--configfile", "plugin.yaml", cwd=folder, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]

    results = folder / TINY_RESULTS  # plugin.yaml keeps tiny.yaml's experiment
    runs = pd.read_parquet(results / "runs.parquet")
    assert sorted(runs["method"]) == ["baseline", "fd-head"]
    assert runs["mean"].between(0, 1).all()
    model = results / "digits8" / "fd-head" / "seed0"
    summary = json.loads((model / "evaluation.json").read_text())
    assert summary["config"]["model"]["arch"] == "conv-pool"
    assert summary["config"]["model"]["options"] == {"width": 6}
    activations = pd.read_parquet(model / "activations.parquet")
    assert list(dict.fromkeys(activations["layer"])) == [
        "conv",
        "bn",
        "relu",
        "pool",
        "flat",
        "head",
    ]
    assert {p.stem for p in (model / "figures").glob("*.png")} >= {"filters", "tsne", "saliency"}
    episodes = pd.read_parquet(results / "episodes.parquet")
    assert set(episodes["method"]) == {"baseline", "fd-head"}
    # The plug-in network's every child with parameters is a freezing setting.
    freeze = episodes.loc[episodes["analysis"] == "freeze", "setting"]
    assert set(freeze) == {"from conv", "from bn", "from head", "body"}
    cka = pd.read_parquet(results / "digits8" / "compare" / "seed0" / "cka.parquet")
    assert set(cka.loc[cka["stage"] == "meta", "model_b"]) == {"fd-head"}
    assert "fd-head" in (results / "report" / "report.html").read_text()

    # Without the package the same config stops before any job, naming what is missing.
    del env["PYTHONPATH"]
    missing = snakemake("-n", "--configfile", "plugin.yaml", cwd=folder)
    assert missing.returncode != 0
    assert "fd-head" in missing.stdout + missing.stderr
