"""Every JSON file the package writes is strict JSON: a missing number is `null`, never a
bare `NaN` or `Infinity` (which jq, JavaScript and `parse_constant` reject), and readers
take `null` for missing."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mamlscope.io import json_number, read_json, read_note, to_json, write_json, write_note
from mamlscope.report.cells import accuracy_cell, over_seeds, pct, plain_cells, seed_cells
from mamlscope.report.results import per_episode


def strict(text: str) -> Any:
    """``json.loads`` that fails on the non-standard constants NaN, Infinity, -Infinity."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_the_strict_reader_refuses_a_bare_nan():
    """The check the other tests rely on can fail."""
    with pytest.raises(AssertionError, match="NaN"):
        strict(json.dumps({"a": math.nan}))


def test_to_json_writes_non_finite_numbers_as_null():
    value = {
        "nan": math.nan,
        "inf": math.inf,
        "list": [0.5, -math.inf, np.float32("nan"), np.float64(0.25)],
        "tuple": (1, np.int64(2), math.nan),
        "nested": {"x": [{"y": math.nan}]},
        "kept": [0, 1.5, "NaN", None, True],
    }
    assert strict(to_json(value)) == {
        "nan": None,
        "inf": None,
        "list": [0.5, None, None, 0.25],
        "tuple": [1, 2, None],
        "nested": {"x": [{"y": None}]},
        "kept": [0, 1.5, "NaN", None, True],
    }


def test_write_json_and_notes_are_strict(tmp_path: Path):
    write_json(tmp_path / "a.json", {"test_accuracy": math.nan, "per_episode": [0.5, math.nan]})
    found = strict((tmp_path / "a.json").read_text())
    assert found == {"test_accuracy": None, "per_episode": [0.5, None]}
    assert read_json(tmp_path / "a.json") == found
    assert math.isnan(json_number(found["test_accuracy"])) and json_number(0.5) == 0.5
    write_note(tmp_path / "fig.png", "no finite features")
    strict((tmp_path / "fig.note.json").read_text())
    assert read_note(tmp_path / "fig.png") == "no finite features"


def test_readers_take_null_as_missing(tmp_path: Path):
    path = tmp_path / "evaluation.json"
    write_json(path, {"per_episode": [0.5, math.nan, 0.75]})
    accuracies = per_episode(path)
    assert accuracies[0] == 0.5 and math.isnan(accuracies[1]) and accuracies[2] == 0.75
    assert accuracy_cell(None, None) == "missing"
    assert accuracy_cell(0.5, None) == "50.00%"
    assert pct(None) == ""
    assert seed_cells([None, 0.5]) == "missing, 50.00%"
    assert plain_cells([None, None]) == "" and plain_cells([None, 0.25]) == "missing, 25.00%"
    assert over_seeds([None, 0.5], None, None) == "one seed: no interval (1 of 2 seeds missing)"


def test_a_maml_evaluation_json_holds_no_nan(tiny_digits, tmp_path: Path, one_thread):
    """MAML reports no plain test accuracy: its evaluation.json says `null` for it."""
    from job_tools import evaluate_job, train_job

    from mamlscope.evaluate import EvalSettings

    train_job(tiny_digits, tiny_digits["cfg"], "maml", tmp_path)
    row = evaluate_job(tiny_digits, tmp_path, EvalSettings.from_config(tiny_digits["cfg"], "maml"))
    assert math.isnan(row["test_accuracy"])  # the row itself keeps NaN (a Parquet null-able)
    summary = strict((tmp_path / "evaluation.json").read_text())
    assert summary["test_accuracy"] is None
    assert summary["method"] == "maml" and len(summary["per_episode"]) == summary["episodes"]
