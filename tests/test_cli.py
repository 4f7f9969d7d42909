"""`mamlscope evaluate` on episode tables of real image files, and its one-line errors."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mamlscope.cli import main
from mamlscope.data.prepared import PreparedDataset
from mamlscope.evaluate import EvalSettings, run_evaluation
from mamlscope.methods import method_names
from mamlscope.train import run_training

CONSOLE_SCRIPT = Path(sys.executable).parent / "mamlscope"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoints(tiny_digits, tmp_path_factory) -> dict[str, dict]:
    """A checkpoint of every registered method, each with its accuracy on the fixed test
    episodes."""
    out = {}
    for method in method_names():
        folder = tmp_path_factory.mktemp(f"cli-{method}")
        run_training(
            images=tiny_digits["images"],
            index=tiny_digits["index"],
            meta=tiny_digits["meta"],
            pools=tiny_digits["pools"],
            val_episodes=tiny_digits["val_episodes"],
            config=tiny_digits["cfg"],
            method=method,
            seed=0,
            device="cpu",
            checkpoint=folder / "model.pt",
            metrics=folder / "metrics.parquet",
            progress=False,
        )
        row = run_evaluation(
            checkpoint=folder / "model.pt",
            images=tiny_digits["images"],
            index=tiny_digits["index"],
            meta=tiny_digits["meta"],
            pools=tiny_digits["pools"],
            test_episodes=tiny_digits["test_episodes"],
            settings=EvalSettings.from_config(tiny_digits["cfg"], method),
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


@pytest.mark.parametrize("method", method_names())
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


@pytest.mark.slow
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


# --- episodes checked as strictly as the pipeline checks its own ------------------------------


def in_episode(table: pd.DataFrame, episode: int, role: str | None = None, label=None) -> pd.Series:
    rows = table["episode"] == episode
    if role is not None:
        rows &= table["role"] == role
    if label is not None:
        rows &= table["label"] == label
    return rows


def _support_misses_label_2(table):
    table.loc[in_episode(table, 3, "support", 2), "label"] = 0
    return table


def _all_support_labels_0(table):
    table.loc[table["role"] == "support", "label"] = 0
    return table


def _label_4_becomes_7(table):
    table.loc[table["label"] == 4, "label"] = 7
    return table


def _no_queries(table):
    return table[~in_episode(table, 3, "query")]


def _no_support(table):
    return table[~in_episode(table, 3, "support")]


def _two_shots_of_label_1(table):
    return pd.concat([table, table[in_episode(table, 3, "support", 1)]], ignore_index=True)


def _fewer_queries_of_label_2(table):
    return table.drop(table.index[in_episode(table, 3, "query", 2)][:1])


def _episode_3_is_3_way(table):
    return table[~(in_episode(table, 3) & (table["label"] >= 3))]


def _blank(column):
    def edit(table):
        table[column] = table[column].astype(object)
        table.loc[table.index[in_episode(table, 3)][0], column] = None
        return table

    return edit


def _episode_name(table):
    table["episode"] = table["episode"].astype(object)
    table.loc[in_episode(table, 3), "episode"] = "three"
    return table


BAD_EPISODES = {
    "support-misses-a-label": (_support_misses_label_2, ["episode 3:", "support", "label 2"]),
    "support-only-label-0": (_all_support_labels_0, ["episode 0:", "support", "[1, 2, 3, 4]"]),
    "a-skipped-label": (_label_4_becomes_7, ["episode 0:", "[0, 1, 2, 3, 7]", "[4, 5, 6]"]),
    "no-queries": (_no_queries, ["episode 3:", "no query rows"]),
    "no-support": (_no_support, ["episode 3:", "no support rows"]),
    "unequal-shots": (_two_shots_of_label_1, ["episode 3:", "support", "label 1: 2"]),
    "unequal-queries": (_fewer_queries_of_label_2, ["episode 3:", "query", "label 2: 4"]),
    "another-way": (_episode_3_is_3_way, ["episode 3 is 3-way", "episode 0 is 5-way"]),
    "blank-episode": (_blank("episode"), ["without an episode number", "data row"]),
    "blank-role": (_blank("role"), ["episode 3:", "without a role"]),
    "blank-image": (_blank("image"), ["episode 3:", "without an image path"]),
    "blank-label": (_blank("label"), ["episode 3:", "without a label"]),
    "episode-not-a-number": (_episode_name, ["episode must be an integer", "'three'"]),
}


@pytest.mark.parametrize("case", list(BAD_EPISODES))
@pytest.mark.parametrize("method", ["maml", "baseline"])
def test_a_malformed_episode_is_named(capsys, checkpoints, tables, tmp_path, method, case):
    edit, words = BAD_EPISODES[case]
    path = edited_table(tables, tmp_path / f"{case}.csv", edit)
    result = evaluate(capsys, checkpoints[method]["path"], path)
    assert_one_line_error(*result, str(path), *words)


def test_a_label_the_maml_head_cannot_output(capsys, checkpoints, tables, tmp_path):
    """6-way episodes for a 5-way head; the baseline fits a 6-way head of its own."""

    def six_way(table):
        """Label 5: label 0's images inverted, new files (an episode repeats no image)."""
        extra = table[table["label"] == 0].assign(label=5)
        for image in extra["image"].unique():
            with Image.open(tables["folder"] / image) as opened:
                pixels = np.asarray(opened)
            Image.fromarray(255 - pixels).save(tables["folder"] / f"{image}.inverted.png")
        extra = extra.assign(image=extra["image"] + ".inverted.png")
        return pd.concat([table, extra], ignore_index=True)

    path = edited_table(tables, tmp_path / "six-way.csv", six_way)
    result = evaluate(capsys, checkpoints["maml"]["path"], path)
    assert_one_line_error(*result, str(path), "episode 0:", "label 5", "5 outputs")
    code, out, err = evaluate(capsys, checkpoints["baseline"]["path"], path, "--json")
    assert code == 0, err


# --- bad command lines and checkpoints: one line, exit 2 ------------------------------------


@pytest.mark.parametrize("batch", ["0", "-1"])
def test_batch_below_one(capsys, checkpoints, tables, batch):
    result = evaluate(capsys, checkpoints["baseline"]["path"], tables["csv"], "--batch", batch)
    assert_one_line_error(*result, "--batch", "at least 1", batch)


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--batch", "many"], ["--batch", "'many'", "--help"]),
        (["--colour"], ["--colour"]),
    ],
    ids=["batch-not-a-number", "unknown-option"],
)
def test_what_argparse_rejects_is_one_line_too(capsys, checkpoints, tables, extra, words):
    result = evaluate(capsys, checkpoints["baseline"]["path"], tables["csv"], *extra)
    assert_one_line_error(*result, *words)


def test_a_missing_required_option(capsys, tables):
    code = main(["evaluate", "--episodes", str(tables["csv"])])
    captured = capsys.readouterr()
    assert_one_line_error(code, captured.out, captured.err, "--checkpoint", "required")


@pytest.mark.parametrize(
    "device, words",
    [("bogus", ["--device", "'bogus'", "not a device"]), ("meta", ["--device", "'meta'"])],
)
def test_a_device_that_is_not_one(capsys, checkpoints, tables, device, words):
    result = evaluate(capsys, checkpoints["maml"]["path"], tables["csv"], "--device", device)
    assert_one_line_error(*result, *words)


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_asked_for_where_there_is_none(capsys, checkpoints, tables, monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    result = evaluate(capsys, checkpoints["maml"]["path"], tables["csv"], "--device", device)
    assert_one_line_error(*result, device, "CUDA")


def test_a_cuda_device_beyond_those_present(capsys, checkpoints, tables):
    index = torch.cuda.device_count()  # one past the last
    name = f"cuda:{index}"
    if index == 0:
        pytest.skip("without CUDA, resolve_device already refuses every cuda device")
    result = evaluate(capsys, checkpoints["maml"]["path"], tables["csv"], "--device", name)
    assert_one_line_error(*result, name, f"{index} CUDA device(s)")


@pytest.mark.parametrize(
    "method, key",
    [
        ("baseline", "baseline.finetune_lr"),
        ("baseline", "normalize.std"),
        ("baseline", "maml.eval_batch"),
        ("maml", "maml.test_inner_steps"),
        ("maml", "image_size"),
    ],
)
def test_a_checkpoint_config_without_a_key_evaluation_needs(
    capsys, checkpoints, tables, tmp_path, method, key
):
    payload = torch.load(checkpoints[method]["path"], weights_only=True)
    *parents, last = key.split(".")
    node = payload["config"]
    for part in parents:
        node = node[part]
    del node[last]
    path = tmp_path / "model.pt"
    torch.save(payload, path)
    result = evaluate(capsys, path, tables["csv"])
    assert_one_line_error(*result, str(path), "config", f"'{key}'")


def test_a_directory_given_as_checkpoint(capsys, checkpoints, tables, tmp_path):
    result = evaluate(capsys, tmp_path, tables["csv"])
    assert_one_line_error(*result, str(tmp_path), "is a directory", "not a checkpoint file")
    folder = checkpoints["maml"]["path"].parent  # holds a model.pt: say so
    result = evaluate(capsys, folder, tables["csv"])
    assert_one_line_error(*result, str(folder), "is a directory", "model.pt inside")


def test_an_empty_checkpoint(capsys, tables, tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"")
    assert_one_line_error(*evaluate(capsys, path, tables["csv"]), str(path), "is empty (0 bytes)")


def test_a_directory_given_as_episode_table(capsys, checkpoints, tables):
    result = evaluate(capsys, checkpoints["maml"]["path"], tables["folder"])
    assert_one_line_error(*result, str(tables["folder"]), "is a directory")


def test_a_multi_line_reason_is_printed_on_one_line(capsys, tables, tmp_path):
    """torch's refusal to unpickle a foreign object spans lines; the error must not."""
    path = tmp_path / "model.pt"
    torch.save({"format": argparse.Namespace(a=1)}, path)
    assert_one_line_error(*evaluate(capsys, path, tables["csv"]), str(path), "not a readable")


# --- the baseline's answer does not depend on --batch ----------------------------------------


@pytest.mark.slow
def test_baseline_accuracy_is_the_same_for_every_batch_size(capsys, checkpoints, tables):
    means = {}
    for batch in ("1", "7", "50"):
        code, out, err = evaluate(
            capsys, checkpoints["baseline"]["path"], tables["csv"], "--json", "--batch", batch
        )
        assert code == 0, err
        means[batch] = json.loads(out)["mean"]
    assert means["1"] == means["7"] == means["50"], means


# --- BatchNorm evaluation modes -----------------------------------------------------------


def test_the_batchnorm_mode_is_reported_and_changes_maml_numbers(capsys, checkpoints, tables):
    results = {}
    for mode in ("transductive", "support"):
        code, out, err = evaluate(
            capsys, checkpoints["maml"]["path"], tables["csv"], "--batchnorm", mode, "--json"
        )
        assert code == 0, err
        results[mode] = json.loads(out)
        assert results[mode]["batchnorm"] == mode
    assert results["transductive"]["mean"] == pytest.approx(checkpoints["maml"]["row"]["mean"])
    assert results["transductive"]["mean"] != results["support"]["mean"]
    code, out, _ = evaluate(capsys, checkpoints["baseline"]["path"], tables["csv"], "--json")
    assert code == 0 and json.loads(out)["batchnorm"] == "running"


def test_an_unknown_batchnorm_mode_is_one_line(capsys, checkpoints, tables):
    code, _, err = evaluate(
        capsys, checkpoints["maml"]["path"], tables["csv"], "--batchnorm", "tasknorm"
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and "tasknorm" in err


def test_version_is_the_package_version(capsys):
    """`mamlscope --version` prints `mamlscope <version>`, the version pyproject declares."""
    import tomllib

    import mamlscope

    declared = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert mamlscope.__version__ == declared["project"]["version"]
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"mamlscope {mamlscope.__version__}\n"
    if CONSOLE_SCRIPT.exists():  # the installed entry point, as a user types it
        done = subprocess.run([CONSOLE_SCRIPT, "--version"], capture_output=True, text=True)
        assert (done.returncode, done.stdout) == (0, f"mamlscope {mamlscope.__version__}\n")


def test_citation_and_license_agree_with_the_package():
    """CITATION.cff is CFF 1.2.0 YAML naming the package's version and licence, and the
    papers it builds on; LICENSE is the MIT text pyproject declares."""
    import tomllib

    import yaml

    import mamlscope

    root = Path(__file__).parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    cff = yaml.safe_load((root / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    assert str(cff["version"]) == mamlscope.__version__
    assert cff["license"] == project["license"] == "MIT"
    assert cff["title"] and cff["message"] and cff["authors"] == [{"name": "the mamlscope authors"}]
    cited = {(ref["authors"][0]["family-names"], ref["year"]) for ref in cff["references"]}
    assert cited == {("Finn", 2017), ("Raghu", 2020)}
    license_text = (root / "LICENSE").read_text()
    assert license_text.startswith("MIT License\n\nCopyright (c) 2026 the mamlscope authors\n")
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in license_text
