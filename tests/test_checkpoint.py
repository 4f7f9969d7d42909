"""Checkpoints: a faithful round trip, what travels with the weights, and every bad file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import mamlscope
from mamlscope.checkpoint import FORMAT, ModelSpec, load_checkpoint, save_checkpoint
from mamlscope.errors import CheckpointError
from mamlscope.train import run_training

SPECS = {
    "fc": ModelSpec("fc", (1, 8, 8), 5, hidden=[32, 16]),
    "fc-running-stats": ModelSpec("fc", (1, 8, 8), 10, hidden=[32, 16], running_stats=True),
    "conv4": ModelSpec("conv4", (1, 8, 8), 5, filters=4, running_stats=True),
    "resnet12": ModelSpec(
        "resnet12", (3, 16, 16), 5, running_stats=True, options={"channels": [2, 3, 4, 5]}
    ),
}
CONFIG = {"episodes": {"way": 5, "shot": 1}, "nested": {"list": [1, 2.5, "x"], "none": None}}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def trained_like(spec: ModelSpec) -> torch.nn.Module:
    """A model whose weights and BatchNorm running statistics are far from their defaults."""
    torch.manual_seed(11)
    model = spec.build()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    model.train()
    for _ in range(3):  # moves running statistics where the model has them
        model(torch.rand(16, *spec.in_shape) * 3 + 1)
    return model.eval()


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    spec = SPECS["fc"]
    save_checkpoint(path, trained_like(spec), spec, method="maml", seed=3, config=CONFIG)
    return path


@pytest.mark.parametrize("name", list(SPECS))
def test_round_trip_gives_identical_outputs(tmp_path, name):
    spec = SPECS[name]
    model = trained_like(spec)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, spec, method="baseline", seed=1, config=CONFIG)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary left behind
    loaded = load_checkpoint(path)
    assert loaded.spec == spec
    assert not loaded.model.training  # ready to predict
    state, back = model.state_dict(), loaded.model.state_dict()
    assert state.keys() == back.keys()
    for key in state:
        assert torch.equal(state[key], back[key]), key
    x = torch.randn(7, *spec.in_shape)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.model(x))


def test_running_statistics_travel(tmp_path):
    spec = SPECS["fc-running-stats"]
    model = trained_like(spec)
    assert not torch.equal(model.bn1.running_mean, torch.zeros(32))  # the test means something
    save_checkpoint(tmp_path / "m.pt", model, spec, method="baseline", seed=0, config={})
    loaded = load_checkpoint(tmp_path / "m.pt").model
    assert torch.equal(loaded.bn1.running_mean, model.bn1.running_mean)
    assert torch.equal(loaded.bn1.running_var, model.bn1.running_var)


def test_method_seed_config_and_version_travel(saved):
    ckpt = load_checkpoint(saved)
    assert ckpt.method == "maml"
    assert ckpt.seed == 3
    assert ckpt.config == CONFIG
    assert ckpt.version == mamlscope.__version__
    payload = torch.load(saved, weights_only=True)
    assert payload["format"] == FORMAT
    assert payload["spec"]["in_shape"] == [1, 8, 8]


def test_a_checkpoint_written_before_model_options_existed_still_loads(saved):
    payload = torch.load(saved, weights_only=True)
    assert payload["spec"]["options"] == {}
    del payload["spec"]["options"]  # the spec as earlier versions wrote it
    torch.save(payload, saved)
    ckpt = load_checkpoint(saved)
    assert ckpt.spec == SPECS["fc"] and ckpt.spec.options == {}
    assert torch.equal(ckpt.model.fc1.weight, trained_like(SPECS["fc"]).fc1.weight)


def test_model_options_travel(tmp_path):
    spec = SPECS["resnet12"]
    save_checkpoint(tmp_path / "m.pt", trained_like(spec), spec, method="maml", seed=0, config={})
    assert torch.load(tmp_path / "m.pt", weights_only=True)["spec"]["options"] == spec.options
    model = load_checkpoint(tmp_path / "m.pt").model
    assert [model.get_submodule(f"block{i}").conv1.out_channels for i in range(1, 5)] == [
        2,
        3,
        4,
        5,
    ]


def test_training_writes_a_checkpoint_with_its_resolved_config(tiny_digits, tmp_path):
    cfg = tiny_digits["cfg"]
    result = run_training(
        images=tiny_digits["images"],
        index=tiny_digits["index"],
        meta=tiny_digits["meta"],
        pools=tiny_digits["pools"],
        val_episodes=tiny_digits["val_episodes"],
        config=cfg,
        method="fomaml",
        seed=5,
        device="cpu",
        checkpoint=tmp_path / "model.pt",
        metrics=tmp_path / "metrics.parquet",
        progress=False,
    )
    ckpt = load_checkpoint(tmp_path / "model.pt")
    assert (ckpt.method, ckpt.seed, ckpt.version) == ("fomaml", 5, mamlscope.__version__)
    assert ckpt.config == cfg
    assert "fd_epsilon" in ckpt.config["maml"]  # resolved: a default the test never named
    assert ckpt.spec == result.spec
    assert ckpt.spec.num_classes == cfg["episodes"]["way"]
    assert ckpt.spec.in_shape == (1, 8, 8)
    x = torch.randn(25, 1, 8, 8)
    result.model.eval()
    with torch.no_grad():
        assert torch.equal(result.model(x), ckpt.model(x))


# --- every way a file can be wrong ---------------------------------------------------------


def check_error(path: Path, *words: str) -> None:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_missing_file(tmp_path):
    check_error(tmp_path / "absent.pt", "not found")


def test_truncated_file(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    check_error(saved, "truncated")


def test_empty_file(saved):
    saved.write_bytes(b"")
    check_error(saved)


@pytest.mark.parametrize(
    "content",
    [os.urandom(4096), b"episode,role,image,label\n0,support,a.png,0\n"],
    ids=["random-bytes", "a-csv-file"],
)
def test_a_file_that_is_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    check_error(path, "not")


@pytest.mark.parametrize(
    "obj", [{"state_dict": {}}, torch.zeros(3), [1, 2]], ids=["dict", "tensor", "list"]
)
def test_a_torch_file_not_written_by_mamlscope(tmp_path, obj):
    path = tmp_path / "model.pt"
    torch.save(obj, path)
    check_error(path, FORMAT)


@pytest.mark.parametrize(
    "edit",
    [
        {"hidden": [64, 16]},  # other widths
        {"hidden": [32]},  # fewer layers
        {"hidden": [32, 16, 8]},  # more layers
        {"num_classes": 10},  # another head
        {"in_shape": [1, 16, 16]},  # another input size
        {"arch": "conv4", "filters": 8, "hidden": None},  # another architecture
        {"running_stats": True},  # buffers the weights lack
        {"arch": "resnet18"},  # an architecture this version does not know
        {"options": {"channels": [4, 4, 8, 8]}},  # options fc does not take
        {"arch": "resnet12", "in_shape": [1, 16, 16], "options": {"channels": [4, 4, 8, 8]}},
        {"depth": 3},  # a spec field this version does not know
    ],
    ids=lambda e: "-".join(e),
)
def test_weights_that_do_not_fit_the_spec(saved, edit):
    payload = torch.load(saved, weights_only=True)
    payload["spec"].update(edit)
    torch.save(payload, saved)
    check_error(saved)


@pytest.mark.parametrize("key", ["spec", "state_dict", "method"])
def test_a_checkpoint_missing_an_entry(saved, key):
    payload = torch.load(saved, weights_only=True)
    del payload[key]
    torch.save(payload, saved)
    check_error(saved, key)


def test_empty_file_says_so(saved):
    saved.write_bytes(b"")
    check_error(saved, "is empty (0 bytes)")


def test_a_directory(tmp_path, saved):
    (tmp_path / "folder").mkdir()
    check_error(tmp_path / "folder", "is a directory, not a checkpoint file")
    check_error(saved.parent, "is a directory", "give the model.pt inside it")


def test_require_names_the_missing_config_key(saved):
    ckpt = load_checkpoint(saved)
    ckpt.require("episodes.way", "nested.list", "nested.none")  # present, even when None
    for key in ("maml", "episodes.query", "episodes.way.more"):
        with pytest.raises(CheckpointError) as info:
            ckpt.require("episodes.shot", key)
        assert str(saved) in str(info.value) and f"lacks '{key}'" in str(info.value)
