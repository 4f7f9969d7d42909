"""Training snapshots (`maml.snapshots`): evenly spaced weights kept during meta-training,
rebuilt as models for the analyses over training."""

from __future__ import annotations

import copy

import pytest
import torch
from job_tools import train_job

from mamlscope.checkpoint import load_checkpoint
from mamlscope.errors import CheckpointError
from mamlscope.snapshots import load_snapshots, snapshot_steps


def test_snapshot_steps_are_evenly_spaced_and_end_at_the_last_step():
    assert snapshot_steps(600, 5) == [120, 240, 360, 480, 600]
    assert snapshot_steps(400, 3) == [133, 267, 400]
    assert snapshot_steps(3, 5) == [1, 2, 3]  # fewer steps than snapshots
    assert snapshot_steps(600, 0) == [] and snapshot_steps(0, 5) == []
    with pytest.raises(ValueError):
        snapshot_steps(-1, 2)


@pytest.mark.slow
def test_meta_training_keeps_its_snapshots_and_the_last_is_the_checkpoint(tiny_digits, tmp_path):
    cfg = copy.deepcopy(tiny_digits["cfg"])
    cfg["maml"]["snapshots"] = 4  # 40 meta-steps: 10, 20, 30, 40
    out = tmp_path / "maml"
    train_job(tiny_digits, cfg, "maml", out, snapshots=True)
    checkpoint = load_checkpoint(out / "model.pt")
    kept = load_snapshots(out / "snapshots.pt", checkpoint)
    assert [f for f, _ in kept] == [0.25, 0.5, 0.75, 1.0]
    final = kept[-1][1].state_dict()
    for name, value in checkpoint.model.state_dict().items():
        assert torch.equal(final[name], value), name
    first = kept[0][1].state_dict()
    assert not all(torch.equal(first[n], v) for n, v in final.items())  # training moved it
    assert not kept[0][1].training  # eval mode, like a loaded checkpoint


@pytest.mark.slow
def test_standard_training_keeps_its_final_weights_and_a_foreign_file_is_refused(
    tiny_digits, tmp_path
):
    train_job(tiny_digits, tiny_digits["cfg"], "baseline", tmp_path, snapshots=True)
    checkpoint = load_checkpoint(tmp_path / "model.pt")
    [(fraction, model)] = load_snapshots(tmp_path / "snapshots.pt", checkpoint)
    assert fraction == 1.0
    for name, value in checkpoint.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    torch.save({"format": "other"}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad.pt: not a mamlscope snapshots file"):
        load_snapshots(tmp_path / "bad.pt", checkpoint)
