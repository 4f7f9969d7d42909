"""`snakemake --config` overrides arrive as text below the top level: the config check types
them as the schema says, and a string that is no such value still gets one clear line."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from config_tools import refused
from workflow_tools import TINY_CONFIG, copy_workflow, snakemake

from mamlscope.config import validate_config
from mamlscope.config_checks import typed_string

REPO = Path(__file__).resolve().parents[1]
TINY = yaml.safe_load((REPO / "tests" / "tiny.yaml").read_text())


def tiny(**sections: Any) -> dict[str, Any]:
    """tests/tiny.yaml with ``sections`` merged one level deep (as `--config` would)."""
    cfg = copy.deepcopy(TINY)
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values} if isinstance(values, dict) else values
    return cfg


@pytest.mark.parametrize(
    ("text", "expected", "value"),
    [
        ("50", "integer", 50),
        ("0x10", "integer", 16),
        ("1e-3", "number", 1e-3),  # YAML 1.1 reads this as a string; a user means a number
        ("0.5", ["number", "null"], 0.5),
        ("true", "boolean", True),
        ("null", ["array", "null"], None),
        ("[16, 8]", "array", [16, 8]),
        ("{a: 1}", "object", {"a": 1}),
    ],
)
def test_typed_string_reads_the_expected_type(text, expected, value):
    assert typed_string(text, expected) == (True, value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("many", "integer"), ("50.0", "integer"), ("1", "boolean"), ("[1", "array"), ("x", "null")],
)
def test_typed_string_leaves_what_is_not_of_the_type(text, expected):
    assert typed_string(text, expected) == (False, text)


def test_nested_strings_take_the_schema_types():
    cfg = tiny(
        seeds=["0", "1"],  # `--config seeds=[0,1]`
        maml={"meta_steps": "50", "inner_lr": "1e-3", "max_tasks_in_flight": "4"},
        baseline={"finetune_all": "true", "betas": ["0.8", "0.99"]},
        features={"neurons": [{"layer": "bn1", "unit": "0"}], "probe_images": "50"},
    )
    cfg["datasets"]["digits8"]["rotations"] = "false"
    cfg["datasets"]["digits8"]["episodes"] = {"way": "3", "shot": "2", "query": "4"}
    out = validate_config(cfg, check_paths=False)
    ds = out["datasets"]["digits8"]
    assert out["seeds"] == [0, 1]
    assert out["maml"]["meta_steps"] == ds["maml"]["meta_steps"] == 50
    assert isinstance(ds["maml"]["meta_steps"], int)
    assert ds["maml"]["inner_lr"] == pytest.approx(1e-3)
    assert ds["maml"]["max_tasks_in_flight"] == 4
    assert ds["baseline"]["finetune_all"] is True
    assert ds["baseline"]["betas"] == [0.8, 0.99]
    assert out["features"]["neurons"] == [{"layer": "bn1", "unit": 0}]
    assert out["features"]["probe_images"] == 50
    assert ds["rotations"] is False
    assert (ds["episodes"]["way"], ds["episodes"]["shot"], ds["episodes"]["query"]) == (3, 2, 4)
    # strings the schema wants as strings stay strings
    assert ds["maml"]["eval_batchnorm"] == "transductive" and ds["model"]["arch"] == "fc"


def test_a_null_override_and_a_model_options_override_are_typed():
    """`features={neurons: null}` and an arch's own options (the registry's schema)."""
    cfg = tiny(features={"neurons": "null"})
    assert validate_config(cfg, check_paths=False)["features"]["neurons"] is None
    cfg = tiny(model={"arch": "resnet12", "options": {"channels": ["4", "4", "8", "8"]}})
    cfg["datasets"]["digits8"]["image_size"] = 16
    cfg["features"]["neurons"] = None
    ds = validate_config(cfg, check_paths=False)["datasets"]["digits8"]
    assert ds["model"]["options"]["channels"] == [4, 4, 8, 8]


def test_a_wrong_type_is_one_line_naming_the_key():
    """Inherited by every dataset, the bad top-level key is still named once."""
    message = refused(tiny(maml={"meta_steps": "many"}))
    assert message == "invalid config:\n  maml.meta_steps: 'many' is not of type 'integer'"
    # 50.0 would pass the schema's own integer check but break `range()`: kept as text
    assert "maml.meta_steps: '50.0' is not of type 'integer'" in refused(
        tiny(maml={"meta_steps": "50.0"})
    )


def test_a_dataset_own_bad_value_is_named_at_the_dataset():
    cfg = tiny()
    cfg["datasets"]["digits8"]["maml"] = {"meta_steps": "lots"}
    message = refused(cfg)
    assert "datasets.digits8.maml.meta_steps: 'lots' is not of type 'integer'" in message
    assert "\n  maml.meta_steps" not in message


def test_a_non_finite_override_is_refused_at_its_key():
    message = refused(tiny(maml={"inner_lr": ".nan"}))
    assert message == "maml.inner_lr: must be a finite number, got nan"


# --- through snakemake ------------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The workflow files and tests/tiny.yaml in a fresh folder (results land there)."""
    copy_workflow(tmp_path)
    shutil.copy(TINY_CONFIG, tmp_path / "tiny.yaml")
    return tmp_path


def dry_run(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return snakemake("-n", "--cores", "1", *args, cwd=workdir, env={"OMP_NUM_THREADS": "1"})


@pytest.mark.workflow
def test_snakemake_config_override_of_a_nested_key(workdir: Path):
    """About 10 s each on 2 cores: the Snakefile parses and validates, no job runs."""
    ok = dry_run(workdir, "--configfile", "tiny.yaml", "--config", "maml={meta_steps: 50}")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "This was a dry-run" in ok.stdout
    bad = dry_run(workdir, "--configfile", "tiny.yaml", "--config", "maml={meta_steps: many}")
    assert bad.returncode != 0
    output = bad.stdout + bad.stderr
    assert "invalid config:\n  maml.meta_steps: 'many' is not of type 'integer'\n" in output
    assert not (workdir / "results").exists()


@pytest.mark.workflow
def test_two_config_files_merge_in_order(workdir: Path):
    """`--configfile tiny.yaml extra.yaml`: extra.yaml's keys over tiny.yaml's, section by
    section. tiny.yaml's features.probe_images (40) is kept beside extra.yaml's
    features.extremes (50), which the extremes check then refuses; the default probe (300)
    would have passed."""
    (workdir / "extra.yaml").write_text("features: {extremes: 50}\n")
    result = dry_run(workdir, "--configfile", "tiny.yaml", "extra.yaml")
    assert result.returncode != 0
    assert "features.probe_images is only 40" in result.stdout + result.stderr
