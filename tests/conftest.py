"""Shared fixtures: where the real data lives, and skipping cleanly when it does not."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """`MAMLSCOPE_SHARED_DATA` if set, else `../shared/data` beside the checkout."""
    return Path(os.environ.get("MAMLSCOPE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder; the test is skipped when it is absent (CI sets it, so CI runs it)."""
    path = shared_data_dir()
    if not path.is_dir():
        if os.environ.get("MAMLSCOPE_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(f"MAMLSCOPE_REQUIRE_SHARED_DATA=1 but {path} does not exist")
        pytest.skip(f"real data not found at {path}")
    return path


@pytest.fixture(scope="session")
def tiny_digits(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """scikit-learn's 8x8 digits prepared and split once per session (about a second).

    Returns ``data_dir``, ``split_dir`` and ``cfg``: the validated dataset config (5-way
    1-shot, examples protocol, a [32, 16] fc net, training sized for well under a second);
    and the files: ``images``, ``index``, ``meta``, ``pools``, ``val_episodes``,
    ``test_episodes``.
    Copy ``cfg`` (``copy.deepcopy``) before changing it: the dict is shared.
    """
    import pandas as pd

    from mamlscope.config import data_section, validate_config
    from mamlscope.data.prepared import prepare_dataset
    from mamlscope.data.splits import write_split

    raw = {
        "seeds": [0],
        "datasets": {
            "digits8": {
                "source": "digits",
                "image_size": 8,
                "split": {"protocol": "examples", "train": 0.6, "val": 0.2},
                "episodes": {
                    "way": 5,
                    "shot": 1,
                    "query": 5,
                    "test_episodes": 40,
                    "val_episodes": 10,
                },
                "model": {"arch": "fc", "hidden": [32, 16]},
                "maml": {
                    "meta_steps": 40,
                    "meta_batch": 8,
                    "val_every": 20,
                    "meta_lr": 0.01,
                    "inner_lr": 0.4,
                    "inner_steps": 1,
                    "test_inner_steps": 5,
                    "eval_batch": 50,
                },
                "baseline": {
                    "epochs": 2,
                    "lr": 0.01,
                    "batch_size": 64,
                    "finetune_steps": 30,
                    "finetune_lr": 0.05,
                    "finetune_all": False,
                },
            }
        },
    }
    cfg = validate_config(raw, check_paths=False)["datasets"]["digits8"]
    root = tmp_path_factory.mktemp("tiny_digits")
    data_dir = prepare_dataset("digits8", data_section(cfg), root / "data", show_progress=False)
    index = pd.read_parquet(data_dir / "index.parquet")
    split_dir = root / "split" / "seed0"
    write_split(index, cfg["split"], cfg["episodes"], 0, split_dir)
    return {
        "data_dir": data_dir,
        "split_dir": split_dir,
        "cfg": cfg,
        **prepared_files(data_dir),
        **split_files(split_dir),
    }


def prepared_files(data_dir: Path) -> dict[str, Path]:
    """The prepared dataset's files, as `run_training` and `run_evaluation` take them."""
    from mamlscope.data.prepared import IMAGES, INDEX, META

    return {"images": data_dir / IMAGES, "index": data_dir / INDEX, "meta": data_dir / META}


def split_files(split_dir: Path) -> dict[str, Path]:
    """A seed's split files (as `splits.write_split` names them)."""
    return {
        "pools": split_dir / "pools.parquet",
        "val_episodes": split_dir / "episodes_val.parquet",
        "test_episodes": split_dir / "episodes_test.parquet",
    }


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/tiny.yaml run for real once per test session, report included: the folder of
    an up-to-date results tree that every workflow test reads (and dry-runs edits against;
    a test that changes a workflow file puts it back)."""
    import time

    from workflow_tools import copy_workflow, snakemake

    folder = copy_workflow(tmp_path_factory.mktemp("tiny_pipeline"))
    shutil.copy(Path(__file__).with_name("tiny.yaml"), folder / "tiny.yaml")
    start = time.perf_counter()
    result = snakemake("--cores", "2", "--configfile", "tiny.yaml", cwd=folder)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    print(f"the tiny pipeline, report included: {time.perf_counter() - start:.1f} s")
    return folder


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """torch on one thread for a module (``pytestmark = pytest.mark.usefixtures(...)``): the
    suite runs test files in parallel on few cores, where more threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
