"""`mamlscope evaluate` on episode tables of real image files, and its one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from mamlscope.cli import main
from mamlscope.pipeline import run_evaluation
from mamlscope.prepared import PreparedDataset
from mamlscope.train import run_training

CONSOLE_SCRIPT = Path(sys.executable).parent / "mamlscope"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoints(tiny_digits, tmp_path_factory) -> dict[str, dict]:
    """A maml and a baseline checkpoint, each with its accuracy on the fixed test episodes."""
    out = {}
    for method in ("maml", "baseline"):
        folder = tmp_path_factory.mktemp(f"cli-{method}")
        run_training(
            data_dir=tiny_digits["data_dir"],
            split_dir=tiny_digits["split_dir"],
            ds_cfg=tiny_digits["cfg"],
            method=method,
            seed=0,
            device="cpu",
            checkpoint=folder / "model.pt",
            metrics=folder / "metrics.parquet",
            progress=False,
        )
        row = run_evaluation(
            checkpoint=folder / "model.pt",
            data_dir=tiny_digits["data_dir"],
            split_dir=tiny_digits["split_dir"],
            dataset="digits8",
            device="cpu",
            summary_json=folder / "evaluation.json",
            summary_parquet=folder / "evaluation.parquet",
        )
        out[method] = {"path": folder / "model.pt", "row": row}
    return out


@pytest.fixture(scope="module")
def tables(tiny_digits, tmp_path_factory) -> dict[str, Path]:
    """The fixed test episodes as PNG files and a CSV and a Parquet table naming them.

    Image paths are relative to the tables' folder, which is not the working directory.
    """
    folder = tmp_path_factory.mktemp("episodes")
    data = PreparedDataset.load(tiny_digits["data_dir"])
    episodes = pd.read_parquet(tiny_digits["split_dir"] / "episodes_test.parquet")
    episodes = episodes.sort_values(["episode", "role", "label"], kind="stable")
    (folder / "images").mkdir()
    for example in episodes["example_id"].unique():
        Image.fromarray(data.images[example, 0], mode="L").save(
            folder / "images" / f"{example}.png"
        )
    table = pd.DataFrame(
        {
            "episode": episodes["episode"].to_numpy(),
            "role": episodes["role"].to_numpy(),
            "image": [f"images/{e}.png" for e in episodes["example_id"]],
            "label": episodes["label"].to_numpy(),
        }
    )
    table.to_csv(folder / "episodes.csv", index=False)
    table.to_parquet(folder / "episodes.parquet", index=False)
    return {
        "folder": folder,
        "csv": folder / "episodes.csv",
        "parquet": folder / "episodes.parquet",
    }


def evaluate(capsys, checkpoint: Path, episodes: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["evaluate", "--checkpoint", str(checkpoint), "--episodes", str(episodes), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- evaluating ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["maml", "baseline"])
@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_evaluate_prints_mean_and_interval_as_json(capsys, checkpoints, tables, method, kind):
    code, out, err = evaluate(capsys, checkpoints[method]["path"], tables[kind], "--json")
    assert code == 0, err
    result = json.loads(out)
    assert set(result) >= {"method", "mean", "ci95", "std", "episodes"}
    assert result["method"] == method
    expected = checkpoints[method]["row"]
    # The PNG files hold the prepared pixels, so the numbers are those of the pipeline.
    assert result["episodes"] == expected["episodes"] == 40
    assert result["mean"] == pytest.approx(expected["mean"], abs=1e-6)
    assert result["ci95"] == pytest.approx(expected["ci95"], abs=1e-6)
    assert result["mean"] > 0.5  # 5-way: chance is 0.2


def test_evaluate_prints_a_readable_line_without_json(capsys, checkpoints, tables):
    code, out, _ = evaluate(capsys, checkpoints["maml"]["path"], tables["csv"], "--device", "cpu")
    assert code == 0
    mean = 100 * checkpoints["maml"]["row"]["mean"]
    assert out.startswith("maml: accuracy ")
    assert f"{mean:.2f}% +- " in out and "(40 episodes)" in out


def test_baseline_takes_episodes_of_another_way(capsys, checkpoints, tables, tmp_path):
    """The baseline fine-tunes a fresh head, so 3-way episodes are fine for it."""
    table = pd.read_csv(tables["csv"])
    table = table[table["label"] < 3].assign(image=lambda t: str(tables["folder"]) + "/" + t.image)
    table.to_csv(tmp_path / "three.csv", index=False)
    code, out, err = evaluate(
        capsys, checkpoints["baseline"]["path"], tmp_path / "three.csv", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["episodes"] == 40


def test_installed_console_script(checkpoints, tables, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            str(CONSOLE_SCRIPT),
            "evaluate",
            "--checkpoint",
            str(checkpoints["maml"]["path"]),
            "--episodes",
            str(tables["parquet"]),
            "--json",
            "--device",
            "cpu",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["mean"] == pytest.approx(checkpoints["maml"]["row"]["mean"], abs=1e-6)
    assert summary["ci95"] == pytest.approx(checkpoints["maml"]["row"]["ci95"], abs=1e-6)


# --- bad input: exit 2 and one line that names the problem -------------------------------------


def assert_one_line_error(code: int, out: str, err: str, *words: str) -> None:
    assert code == 2
    assert out == ""
    assert err.startswith("mamlscope: error: ")
    assert err.endswith("\n") and err.count("\n") == 1, err
    for word in words:
        assert word in err, (word, err)


def edited_table(tables: dict, out: Path, edit) -> Path:
    """The CSV table changed by `edit`, written beside the images so relative paths hold."""
    path = tables["folder"] / out.name
    edit(pd.read_csv(tables["csv"])).to_csv(path, index=False)
    return path


def test_missing_checkpoint(capsys, tables, tmp_path):
    absent = tmp_path / "nowhere" / "model.pt"
    assert_one_line_error(*evaluate(capsys, absent, tables["csv"]), "not found", str(absent))


def test_truncated_checkpoint(capsys, checkpoints, tables, tmp_path):
    data = checkpoints["maml"]["path"].read_bytes()
    broken = tmp_path / "model.pt"
    broken.write_bytes(data[: len(data) // 2])
    assert_one_line_error(*evaluate(capsys, broken, tables["csv"]), str(broken), "truncated")


def test_missing_episode_table(capsys, checkpoints, tmp_path):
    absent = tmp_path / "episodes.csv"
    result = evaluate(capsys, checkpoints["maml"]["path"], absent)
    assert_one_line_error(*result, "not found", str(absent))


@pytest.mark.parametrize("column", ["label", "role"])
def test_table_missing_a_column(capsys, checkpoints, tables, tmp_path, column):
    path = edited_table(tables, tmp_path / f"no-{column}.csv", lambda t: t.drop(columns=column))
    result = evaluate(capsys, checkpoints["maml"]["path"], path)
    assert_one_line_error(*result, str(path), "missing column", repr(column))


def test_table_naming_an_absent_image(capsys, checkpoints, tables, tmp_path):
    def edit(table):
        table.loc[3, "image"] = "images/not-there.png"
        return table

    path = edited_table(tables, tmp_path / "absent-image.csv", edit)
    result = evaluate(capsys, checkpoints["maml"]["path"], path)
    assert_one_line_error(*result, str(path), "not-there.png", "not found")


def test_an_image_that_is_not_an_image(capsys, checkpoints, tables, tmp_path):
    (tmp_path / "fake.png").write_text("not a png")

    def edit(table):
        table.loc[0, "image"] = str(tmp_path / "fake.png")
        return table

    path = edited_table(tables, tmp_path / "fake-image.csv", edit)
    result = evaluate(capsys, checkpoints["maml"]["path"], path)
    assert_one_line_error(*result, "fake.png", "cannot read image")


def test_a_role_other_than_support_or_query(capsys, checkpoints, tables, tmp_path):
    def edit(table):
        table.loc[table["role"] == "query", "role"] = "test"
        return table

    path = edited_table(tables, tmp_path / "bad-role.csv", edit)
    result = evaluate(capsys, checkpoints["maml"]["path"], path)
    assert_one_line_error(*result, str(path), "role", "'test'")


def test_way_mismatch_for_a_maml_checkpoint(capsys, checkpoints, tables, tmp_path):
    path = edited_table(tables, tmp_path / "three-way.csv", lambda t: t[t["label"] < 3])
    result = evaluate(capsys, checkpoints["maml"]["path"], path)
    assert_one_line_error(*result, str(path), "3-way", "5 outputs")


@pytest.mark.parametrize(
    "label, words",
    [(-1, ["label", "-1"]), (1.5, ["label", "1.5"])],
    ids=["negative", "fractional"],
)
def test_a_label_that_is_not_a_class_index(capsys, checkpoints, tables, tmp_path, label, words):
    def edit(table):
        table["label"] = table["label"].astype(object)
        table.loc[table.index[-1], "label"] = label  # a query row: it would just count as a miss
        return table

    path = edited_table(tables, tmp_path / "bad-label.csv", edit)
    for method in ("maml", "baseline"):
        result = evaluate(capsys, checkpoints[method]["path"], path)
        assert_one_line_error(*result, str(path), *words)


def test_a_row_without_an_image(capsys, checkpoints, tables, tmp_path):
    def edit(table):
        table.loc[5, "image"] = None
        return table

    path = edited_table(tables, tmp_path / "blank-image.csv", edit)
    result = evaluate(capsys, checkpoints["maml"]["path"], path)
    assert_one_line_error(*result, str(path), "image")


def test_an_empty_table(capsys, checkpoints, tables, tmp_path):
    path = edited_table(tables, tmp_path / "empty.csv", lambda t: t.iloc[:0])
    result = evaluate(capsys, checkpoints["maml"]["path"], path)
    assert_one_line_error(*result, str(path), "no rows")
