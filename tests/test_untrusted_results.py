"""Results that cannot be trusted: collapsed or non-finite features, NaN accuracies, and
damaged JSON, Parquet and PNG files. Each gives a message that names the problem (and the
file), never a signal, a raw parser error or a conclusion drawn from a NaN."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from test_report import make_config, write_tree

from mamlscope.features.embedding import DegenerateFeatures, embed
from mamlscope.io import UnreadableFile, read_note
from mamlscope.models import build_model, layer_names

EMBED_IN_A_CHILD = """
import numpy as np
from mamlscope.features.embedding import embed
for name, x in (("zeros", np.zeros((300, 64))), ("constant", np.full((300, 64), 3.5))):
    try:
        embed(x, "tsne")
        print(name, "embedded")
    except Exception as exc:
        print(name, type(exc).__name__, exc)
"""


def test_tsne_of_collapsed_features_is_an_error_not_a_segfault() -> None:
    # In a child process: today's t-SNE dies with SIGSEGV here, which would kill pytest.
    done = subprocess.run(
        [sys.executable, "-c", EMBED_IN_A_CHILD], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"the child died (signal {-done.returncode}): {done.stderr}"
    for name in ("zeros", "constant"):
        assert f"{name} DegenerateFeatures the features collapsed: all 300 rows" in done.stdout


@pytest.mark.parametrize("method", ["tsne", "pca"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_features_are_named_before_scikit_learn_sees_them(method, bad) -> None:
    x = np.random.default_rng(0).normal(size=(40, 8))
    x[[3, 7], 2] = bad
    with pytest.raises(DegenerateFeatures, match=r"2 non-finite values .* in 2 of 40 rows"):
        embed(x, method)


def test_pca_of_equal_rows_up_to_float32_rounding_is_refused_but_small_features_are_not():
    rows = np.full((50, 6), 1.7, dtype=np.float32)
    rows[::2] = np.nextafter(rows[::2], np.float32(2))  # one float32 step apart
    with pytest.raises(DegenerateFeatures, match="collapsed"):
        embed(rows, "pca")
    small = np.random.default_rng(1).normal(scale=1e-20, size=(50, 6))  # tiny, but varied
    assert np.isfinite(embed(small, "pca")).all()
    two = np.repeat(np.eye(2, 6), 25, axis=0)  # two distinct rows are something to show
    assert np.isfinite(embed(two, "pca")).all()


def _context(values: np.ndarray) -> SimpleNamespace:
    """What the embedding studies and the curves study read of a StudyContext."""
    torch.manual_seed(0)
    model = build_model("fc", (1, 8, 8), 5, hidden=[16, 8], running_stats=True)
    layer = layer_names(model)[layer_names(model).index("head") - 1]
    activations = pd.DataFrame(
        {
            "example_id": range(len(values)),
            "label": np.arange(len(values)) % 5,
            "stage": "meta",
            "episode": -1,
            "layer": layer,
            "values": list(values.astype(np.float32)),
        }
    )
    metrics = pd.DataFrame(
        {"step": [1, 2], "phase": "train", "loss": [1.0, 0.5], "accuracy": [0.3, 0.6]}
    )
    return SimpleNamespace(
        model=model, activations=activations, metrics=metrics, seed=0, title="digits · maml"
    )


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


# The figure job of each method on stand-in contexts, in a child process: today's t-SNE of
# collapsed features dies with SIGSEGV, which would kill pytest.
FIGURE_JOB = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from test_untrusted_results import _context
from mamlscope.features import plots
out, varied = json.loads(sys.argv[2]), sys.argv[3] == "varied"
maml = np.random.default_rng(0).normal(size=(60, 8)) if varied else np.zeros((60, 8))
contexts = {"maml": _context(maml), "baseline": _context(np.eye(60, 8))}
plots.open_model_job = lambda **kwargs: kwargs["checkpoint"]
plots.study_context = lambda method, **kwargs: contexts[method]
for method, files in out.items():
    plots.plot_model_features(
        checkpoint=method, images="", index="", meta="", probe="", activations="",
        metrics="", features={}, title=method, out=files,
    )
"""


def _figure_job(out: dict, features: str = "collapsed") -> None:
    argv = [str(Path(__file__).parent), json.dumps(out, default=str), features]
    done = subprocess.run(
        [sys.executable, "-c", FIGURE_JOB, *argv], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"the figure job died ({done.returncode}): {done.stderr[-2000:]}"


@pytest.mark.slow
def test_the_figure_job_draws_a_figure_that_says_why_and_goes_on(tmp_path, monkeypatch):
    from mamlscope.features.plots import compare_methods
    from mamlscope.report import show
    from mamlscope.report import studies as report_studies
    from mamlscope.report.results import Results

    root, keys, methods = tmp_path / "results", ("tsne", "pca", "curves"), ("maml", "baseline")
    out = {m: {k: report_studies.model_figure(root, "d", m, 0, k) for k in keys} for m in methods}
    _figure_job(out)
    for key in keys:  # every figure drawn, the collapsed model's too
        assert all(len(np.unique(_pixels(out[m][key]).reshape(-1, 3), axis=0)) > 2 for m in out)
    for key in ("tsne", "pca"):
        note = read_note(out["maml"][key])
        assert note is not None and "the features collapsed: all 60 rows are equal" in note
        assert read_note(out["baseline"][key]) is None
    assert read_note(out["maml"]["curves"]) is None
    compare_methods(out, {"tsne": report_studies.compare_figure(root, "d", 0, "tsne")}, "d")

    shown: list[str] = []
    monkeypatch.setattr(show, "markdown", shown.append)
    monkeypatch.setattr(show, "png", lambda path, alt, caption="": shown.append(str(path)))
    config = {"datasets": {"d": {}}, "methods": list(methods), "seeds": [0]}
    show.feature_studies(Results(root, config, *[pd.DataFrame()] * 3))
    said = [s for s in shown if "no result for maml" in s]
    assert any(s.startswith("*t-SNE of the probe set, d, seed 0: no result") for s in said)
    assert any("No PCA of" in s and "collapsed" in s for s in said)

    # Drawn again from features that vary, the figure replaces the note.
    _figure_job({"maml": {"tsne": out["maml"]["tsne"]}}, "varied")
    assert read_note(out["maml"]["tsne"]) is None


# --- NaN accuracies ---------------------------------------------------------------------


def _report_text(results) -> str:
    from mamlscope.report.findings import findings
    from mamlscope.report.results import accuracy_table, reference_note
    from mamlscope.report.results_doc import results_block

    parts = [accuracy_table(results).to_string(), reference_note(results)]
    parts += [line for lines in findings(results).values() for line in lines]
    return "\n".join(parts + [results_block(results, "test", only="accuracy")])


def _set_per_episode(root: Path, method: str, seed: int, change) -> None:
    path = root / "mnist5k" / method / f"seed{seed}" / "evaluation.json"
    summary = json.loads(path.read_text())
    summary["per_episode"] = change(summary["per_episode"])
    path.write_text(json.dumps(summary))  # NaN as JSON's NaN, None as null


def test_a_nan_accuracy_is_shown_as_missing_and_never_compared(tmp_path):
    from mamlscope.report.results import load_results

    config = make_config()
    root = write_tree(tmp_path / "results", config)
    _set_per_episode(root, "maml", 0, lambda acc: [math.nan] + acc[1:5] + [None] + acc[6:])
    runs = pd.read_parquet(root / "runs.parquet")
    runs.loc[(runs["method"] == "baseline") & (runs["seed"] == 0), "test_accuracy"] = math.nan
    runs.to_parquet(root / "runs.parquet")
    results = load_results(root, config)
    text = _report_text(results)
    assert "nan" not in text.lower()
    table = pd.DataFrame(results.episodes)
    kept = table[(table["method"] == "maml") & table["accuracy"].notna()]["accuracy"]
    shown = f"{100 * kept.mean():.2f} ± "
    assert f"{shown}" in text and "(2 of 400 episodes missing)" in text
    assert "(2 episodes missing), " in text  # maml's seed 0
    assert "missing, 94.20%" in text  # the baseline's plain accuracy of seed 0
    assert "(1 seed; 1 of 2 seeds missing)" in text  # the reference note says so
    assert "2 episode rows with a missing accuracy left out." in text  # the findings
    assert "over 398 episode pairs" in text  # the two episodes compare nothing

    # A run whose every accuracy is NaN: maml is missing everywhere, in no comparison.
    for seed in (0, 1):
        _set_per_episode(root, "maml", seed, lambda acc: [math.nan] * len(acc))
    results = load_results(root, config)
    text = _report_text(results)
    assert "nan" not in text.lower()
    row = results_table_row(results, "maml")
    assert row["accuracy (95% CI)"] == "missing" and row["per seed"] == "missing, missing"
    assert row["across seeds (95% CI)"] == "missing"
    best = [line for line in text.splitlines() if "is best by its own evaluation" in line]
    assert best and "No accuracy for maml: left out." in best[0]
    assert " maml (" not in best[0] and "maml > fomaml" not in text  # no ordering of maml


def results_table_row(results, method: str) -> pd.Series:
    from mamlscope.report.results import accuracy_table

    table = accuracy_table(results)
    return table[table["method"] == method].iloc[0]


# --- damaged files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["mnist5k/maml/seed1/evaluation.json", "runs.parquet",
             "mnist5k/split/pools.parquet", "mnist5k/fomaml/seed0/metrics.parquet"],
)  # fmt: skip
@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_damaged_results_file_is_named_with_its_parser_error_kept(tmp_path, name, damage):
    from mamlscope.report.results import load_results

    config = make_config()
    root = write_tree(tmp_path / "results", config)
    path = root / name
    data = path.read_bytes()
    found = {"garbage": b"\x00\xffnot this" * 9, "truncated": data[: len(data) // 2], "empty": b""}
    path.write_bytes(found[damage])
    with pytest.raises(UnreadableFile, match=f"{path} cannot be read as") as caught:
        load_results(root, config)
    assert caught.value.__cause__ is not None  # the parser's own error, kept


def test_an_evaluation_without_per_episode_accuracies_is_named(tmp_path):
    from mamlscope.errors import DataError
    from mamlscope.report.results import load_results

    config = make_config()
    root = write_tree(tmp_path / "results", config)
    _set_per_episode(root, "maml", 0, lambda acc: "ninety percent")
    path = root / "mnist5k" / "maml" / "seed0" / "evaluation.json"
    with pytest.raises(DataError, match=f"{path}: 'per_episode' is not a list of accuracies"):
        load_results(root, config)


def test_the_results_doc_command_names_a_damaged_file(tmp_path, capsys):
    import yaml

    from mamlscope.cli import main

    config = make_config()
    root = write_tree(tmp_path / "results", config)
    path = root / "mnist5k" / "baseline" / "seed0" / "evaluation.json"
    path.write_text('{"per_episode": [0.5, 0.')
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- results:x:begin -->\n<!-- results:x:end -->\n")
    argv = ["results-doc", str(root), "--config", str(config_file), "--doc", str(doc)]
    assert main([*argv, "--name", "x", "--only", "accuracy"]) == 2
    err = capsys.readouterr().err
    assert f"{path} cannot be read as JSON (JSONDecodeError" in err and len(err.splitlines()) == 1


def test_damaged_notes_cka_tables_and_figures_are_named(tmp_path):
    from mamlscope.features.figures import side_by_side
    from mamlscope.report import studies as report_studies

    png = report_studies.model_figure(tmp_path, "d", "maml", 0, "tsne")
    png.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(png)
    note = png.with_name("tsne.note.json")
    note.write_text("{not json")
    with pytest.raises(UnreadableFile, match=f"{note} cannot be read as JSON"):
        report_studies.study_notes(tmp_path, "tsne", ["d"], ["maml"], [0])
    cka = report_studies.cka_file(tmp_path, "d", 0)
    cka.parent.mkdir(parents=True)
    cka.write_bytes(b"PAR1 but not really")
    with pytest.raises(UnreadableFile, match=f"{cka} cannot be read as a Parquet table"):
        report_studies.cka_table(tmp_path, ["d"], [0])
    broken = tmp_path / "broken.png"
    broken.write_bytes(png.read_bytes()[:40])
    with pytest.raises(UnreadableFile, match=f"{broken} is not a readable PNG"):
        side_by_side([png, broken], ["a", "b"], tmp_path / "side.png")
    assert not (tmp_path / "side.png").exists()
