"""What each stage reads of a dataset's config: the sections rules pass as params."""

from __future__ import annotations

import copy

import pytest

from mamlscope.config import (
    data_section,
    evaluate_section,
    split_section,
    train_section,
    validate_config,
)
from mamlscope.errors import ConfigError

MAML = ("maml", "fomaml", "maml-fd")


@pytest.fixture(scope="module")
def ds() -> dict:
    raw = {
        "datasets": {
            "d": {
                "source": "digits",
                "image_size": 8,
                "split": {"protocol": "examples"},
                "episodes": {"way": 5, "shot": 1},
            }
        }
    }
    return validate_config(raw, check_paths=False)["datasets"]["d"]


def edited(ds: dict, dotted: str, value) -> dict:
    out = copy.deepcopy(ds)
    section, key = dotted.split(".")
    out[section][key] = value
    return out


def which_change(ds: dict, dotted: str, value) -> set[str]:
    """The sections (by stage and method) that an edit of one key changes."""
    other = edited(ds, dotted, value)
    changed = set()
    if split_section(other) != split_section(ds):
        changed.add("split")
    if data_section(other) != data_section(ds):
        changed.add("data")
    for method in ("baseline", *MAML):
        if train_section(other, method) != train_section(ds, method):
            changed.add(f"train:{method}")
        if evaluate_section(other, method) != evaluate_section(ds, method):
            changed.add(f"evaluate:{method}")
    return changed


@pytest.mark.parametrize(
    ("dotted", "value", "expected"),
    [
        ("baseline.finetune_steps", 7, {"evaluate:baseline"}),
        ("baseline.finetune_lr", 0.5, {"evaluate:baseline"}),
        ("baseline.finetune_all", True, {"evaluate:baseline"}),
        ("baseline.epochs", 9, {"train:baseline"}),
        ("baseline.lr", 0.5, {"train:baseline"}),
        ("maml.meta_steps", 7, {f"train:{m}" for m in MAML}),
        ("maml.meta_batch", 7, {f"train:{m}" for m in MAML}),
        ("maml.strategy", "loop", {f"train:{m}" for m in MAML}),
        ("maml.fd_epsilon", 1e-7, {"train:maml-fd"}),
        ("maml.eval_batchnorm", "support", {f"evaluate:{m}" for m in MAML}),
        # Validation during training adapts with these: MAML training reads them too.
        ("maml.test_inner_steps", 3, {f"{s}:{m}" for s in ("train", "evaluate") for m in MAML}),
        ("maml.inner_lr", 0.1, {f"{s}:{m}" for s in ("train", "evaluate") for m in MAML}),
        # eval_batch also batches the baseline's episodes (heads initialised per batch).
        (
            "maml.eval_batch",
            7,
            {f"train:{m}" for m in MAML} | {f"evaluate:{m}" for m in ("baseline", *MAML)},
        ),
        ("episodes.test_episodes", 7, {"split"}),
        ("episodes.val_episodes", 7, {"split"}),
        (
            "episodes.query",
            7,
            {"split"}
            | {f"train:{m}" for m in MAML}
            | {f"evaluate:{m}" for m in ("baseline", *MAML)},
        ),
        ("split.train", 0.5, {"split"}),
        (
            "model.hidden",
            [8],
            {f"train:{m}" for m in ("baseline", *MAML)},
        ),
    ],
)
def test_an_edit_changes_only_the_sections_that_read_it(ds, dotted, value, expected):
    assert which_change(ds, dotted, value) == expected


def test_sections_keep_the_config_nesting(ds):
    base = train_section(ds, "baseline")
    assert set(base) == {"model", "baseline"}
    assert set(base["baseline"]) == {"lr", "betas", "weight_decay", "batch_size", "epochs"}
    fd = train_section(ds, "maml-fd")
    assert set(fd) == {"model", "maml", "episodes"}
    assert fd["maml"]["fd_epsilon"] == ds["maml"]["fd_epsilon"]
    assert "fd_epsilon" not in train_section(ds, "maml")["maml"]
    assert fd["episodes"] == {"way": 5, "shot": 1, "query": 15}
    assert evaluate_section(ds, "maml") == {
        "episodes": {"way": 5, "shot": 1, "query": 15},
        "maml": {
            "inner_lr": 0.4,
            "test_inner_steps": 10,
            "eval_batch": 50,
            "eval_batchnorm": "transductive",
        },
    }
    assert evaluate_section(ds, "baseline")["baseline"] == {
        "finetune_steps": 100,
        "finetune_lr": 0.01,
        "finetune_all": False,
    }
    assert split_section(ds) == {"split": ds["split"], "episodes": ds["episodes"]}


def test_sections_are_copies(ds):
    section = train_section(ds, "baseline")
    section["model"]["hidden"].append(1)
    split_section(ds)["split"]["train"] = 0.9
    assert ds["model"]["hidden"] == [256, 128, 64, 64]
    assert ds["split"]["train"] == 0.6


def test_eval_batchnorm_defaults_to_transductive_and_is_checked(ds):
    assert ds["maml"]["eval_batchnorm"] == "transductive"
    raw = {
        "datasets": {
            "d": {
                "source": "digits",
                "split": {"protocol": "examples"},
                "episodes": {"way": 5, "shot": 1},
                "maml": {"eval_batchnorm": "running"},
            }
        }
    }
    with pytest.raises(ConfigError, match=r"datasets\.d\.maml\.eval_batchnorm"):
        validate_config(raw, check_paths=False)


def test_unknown_method_and_missing_keys_are_config_errors(ds):
    with pytest.raises(ConfigError, match="unknown method 'reptile'"):
        train_section(ds, "reptile")
    with pytest.raises(ConfigError, match="unknown method 'reptile'"):
        evaluate_section(ds, "reptile")
    partial = copy.deepcopy(ds)
    del partial["baseline"]["finetune_lr"]
    with pytest.raises(ConfigError, match=r"baseline\.finetune_lr"):
        evaluate_section(partial, "baseline")


def test_sections_do_not_depend_on_the_configs_key_order(ds):
    """Snakemake compares params by repr, which follows dict order: every section is the
    same, key for key and in order, whatever order the config wrote its keys in."""
    from mamlscope.config import data_section, split_section

    def reversed_keys(value):
        if isinstance(value, dict):
            return {k: reversed_keys(value[k]) for k in reversed(list(value))}
        return value

    flipped = reversed_keys(ds)
    assert list(flipped) != list(ds)
    for section in (data_section, split_section):
        assert repr(section(flipped)) == repr(section(ds))
    for method in ("baseline", "maml-fd"):
        assert repr(train_section(flipped, method)) == repr(train_section(ds, method))
        assert repr(evaluate_section(flipped, method)) == repr(evaluate_section(ds, method))
