"""The figure-study registry: its entries, every study drawn for a tiny trained model, and a
plug-in study (an entry point of a distribution on sys.path) drawn and reported like the
built-ins without editing mamlscope."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from plugin_tools import install_distribution

from mamlscope.errors import ConfigError
from mamlscope.features import studies as feature_studies
from mamlscope.features.plots import compare_methods, plot_model_features, study_context
from mamlscope.features.studies import FigureStudy, caption_file, study, study_keys
from mamlscope.model_job import open_model_job
from mamlscope.plugins import PluginError

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = REPO / "report" / "captions" / "features"
BUILT_INS = ["filters", "tsne", "pca", "extremes", "saliency", "maximise", "curves"]
FEATURES = {"neurons": None, "extremes": 2, "saliency_images": 3, "maximise_steps": 2}
METHODS = ("baseline", "maml")


def _draw_nothing(context, out) -> None:
    raise AssertionError("not drawn in this test")


def _built_in(entry: FigureStudy) -> bool:
    return entry.draw.__module__.startswith("mamlscope.features.studies.")


def test_the_studies_in_display_order_the_built_ins_with_their_own_captions() -> None:
    found = feature_studies.studies()  # plug-ins installed in this environment included
    assert [s.key for s in found] == study_keys()
    assert [s.key for s in found if _built_in(s)] == BUILT_INS
    assert [(s.position, s.key) for s in found] == sorted((s.position, s.key) for s in found)
    for entry in found:
        assert study(entry.key) is entry
    for entry in filter(_built_in, found):  # each keeps its own Snakemake report caption
        assert caption_file(entry.key, CAPTIONS) == f"{entry.key}.rst"


def test_an_unknown_study_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown figure study 'tnse'.*'tsne'.*entry point"):
        study("tnse")


def test_a_study_without_its_own_caption_file_gets_the_generic_one(tmp_path) -> None:
    (tmp_path / "mine.rst").write_text("mine")
    assert caption_file("mine", tmp_path) == "mine.rst"
    assert caption_file("other", tmp_path) == "study.rst"
    assert (CAPTIONS / caption_file("other", CAPTIONS)).read_text().strip()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"key": "Weight-Histogram"}, r"lower-case file stem"),
        ({"key": "cka_methods"}, r"CKA rule writes cka_methods.png.*another key"),
        ({"title": " "}, r"title must be a non-empty string"),
        ({"draw": "draw"}, r"draw must be a function"),
        ({"position": 1.5}, r"position must be an integer"),
    ],
)
def test_a_malformed_study_is_refused(fields, message) -> None:
    good = dict(key="mine", title="Mine", caption="Mine.", draw=_draw_nothing, position=1)
    with pytest.raises(ConfigError, match=message):
        FigureStudy(**{**good, **fields})


@pytest.fixture(scope="module")
def trained(tiny_digits, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """A baseline and a MAML model on the tiny digits, with their probe activations."""
    from mamlscope.evaluate import EvalSettings
    from mamlscope.features.extract import extract_activations, write_probe
    from mamlscope.train import run_training

    root = tmp_path_factory.mktemp("studies")
    cfg = copy.deepcopy(tiny_digits["cfg"])
    cfg["maml"]["meta_steps"] = 4
    data = {k: tiny_digits[k] for k in ("images", "index", "meta")}
    probe = root / "probe.parquet"
    write_probe(data["index"], tiny_digits["pools"], images=20, seed=0, out=probe)
    found = {}
    for method in METHODS:
        out = root / method
        run_training(
            **data,
            pools=tiny_digits["pools"],
            val_episodes=tiny_digits["val_episodes"],
            config=cfg,
            method=method,
            seed=0,
            device="cpu",
            checkpoint=out / "model.pt",
            metrics=out / "metrics.parquet",
            progress=False,
        )
        extract_activations(
            checkpoint=out / "model.pt",
            **data,
            probe=probe,
            test_episodes=tiny_digits["test_episodes"],
            settings=EvalSettings.from_config(cfg, method),
            adapt_episodes=1,
            device="cpu",
            out=out / "activations.parquet",
        )
        found[method] = {
            **data,
            "checkpoint": out / "model.pt",
            "metrics": out / "metrics.parquet",
            "activations": out / "activations.parquet",
            "probe": probe,
        }
    return found


def _context(files: dict[str, Path], title: str):
    job = open_model_job(
        checkpoint=files["checkpoint"],
        images=files["images"],
        index=files["index"],
        meta=files["meta"],
        device="cpu",
    )
    return study_context(
        job,
        probe=files["probe"],
        activations=files["activations"],
        metrics=files["metrics"],
        features=FEATURES,
        title=title,
    )


def _picture(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("key", study_keys())
@pytest.mark.slow
def test_every_study_draws_its_figure_of_a_tiny_model_the_same_twice(
    key, method, trained, tmp_path
) -> None:
    context = _context(trained[method], f"digits8 · {method}")
    assert context.meta_learned == (method == "maml")
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    study(key).draw(context, first)
    study(key).draw(context, again)
    pixels = _picture(first)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 200
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 2  # a drawing, not a blank
    assert first.read_bytes() == again.read_bytes()  # seeded: the same figure every time
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.png", "first.png"]


def test_a_figure_job_refuses_an_unknown_study_before_loading_anything(tmp_path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError, match=r"unknown figure study 'nope'"):
        plot_model_features(
            checkpoint=missing,
            images=missing,
            index=missing,
            meta=missing,
            probe=missing,
            activations=missing,
            metrics=missing,
            features=FEATURES,
            title="t",
            out={"filters": tmp_path / "filters.png", "nope": tmp_path / "nope.png"},
        )


PLUGIN = '''
"""A user's study: the distribution of the penultimate layer's probe activations."""

from matplotlib.figure import Figure

from mamlscope.features.activations import layer_matrix
from mamlscope.features.studies import FigureStudy
from mamlscope.models import layer_names


def draw(context, out):
    from mamlscope.features import figures

    layer = layer_names(context.model)[-2]
    values = layer_matrix(context.activations, layer).values.ravel()
    fig = Figure(figsize=(4, 3))
    fig.add_subplot().hist(values, bins=20)
    fig.suptitle(f"{context.title} · {layer}")
    figures.save(fig, out)


STUDY = FigureStudy(
    key="unit_histogram",
    title="Penultimate activations (a test plug-in)",
    caption="The distribution of the layer before the head's activations on the probe set.",
    draw=draw,
    position=35,
)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """``mamlscope_test_studies.histogram`` installed with an entry point in group
    ``mamlscope.feature_studies``."""
    package = tmp_path / "site" / "mamlscope_test_studies"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "histogram.py").write_text(PLUGIN)
    point = f"[{feature_studies.GROUP}]\nunit_histogram = mamlscope_test_studies.histogram:STUDY\n"
    install_distribution(tmp_path / "site", "mamlscope-test-studies", point)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    feature_studies.clear()
    yield "unit_histogram"
    for module in ("mamlscope_test_studies.histogram", "mamlscope_test_studies"):
        sys.modules.pop(module, None)
    monkeypatch.undo()
    feature_studies.clear()


@pytest.mark.slow
def test_a_plugged_study_is_drawn_compared_and_reported(plugin, trained, tmp_path, monkeypatch):
    from mamlscope.report import show
    from mamlscope.report import studies as report_studies
    from mamlscope.report.results import Results

    keys = study_keys()
    assert keys.index("pca") < keys.index(plugin) < keys.index("extremes")  # position 35
    root = tmp_path / "results"
    pngs: dict[str, dict[str, Path]] = {}
    for method in METHODS:
        files = trained[method]
        pngs[method] = {k: report_studies.model_figure(root, "d", method, 0, k) for k in keys}
        plot_model_features(
            **{k: files[k] for k in ("checkpoint", "images", "index", "meta", "probe")},
            activations=files["activations"],
            metrics=files["metrics"],
            features=FEATURES,
            title=f"digits8 · {method}",
            out=pngs[method],
        )
        assert all(_picture(path).size for path in pngs[method].values())
    side = report_studies.compare_figure(root, "d", 0, plugin)
    compare_methods(pngs, {plugin: side}, title="digits8 · seed 0")
    own = [_picture(pngs[m][plugin]) for m in METHODS]
    assert _picture(side).shape[1] == sum(p.shape[1] for p in own)  # side by side

    # The Snakemake report gives it the generic caption; the notebook its title and caption.
    assert caption_file(plugin, CAPTIONS) == "study.rst"
    assert plugin in [s.key for s in report_studies.figure_studies()]
    shown: list[str] = []
    monkeypatch.setattr(show, "markdown", shown.append)
    monkeypatch.setattr(show, "png", lambda path, alt, caption="": shown.append(Path(path)))
    config = {"datasets": {"d": {}}, "methods": list(METHODS), "seeds": [0]}
    show.feature_studies(Results(root, config, *[pd.DataFrame()] * 3))
    entry = study(plugin)
    heading = shown.index(f"### {entry.title}\n\n{entry.caption}")
    assert shown[heading + 1] == side  # the side-by-side figure, under its own heading
    assert pngs["maml"]["tsne"] in shown  # the built-ins' figures too


def test_a_plugged_study_with_a_built_in_key_is_refused(tmp_path, monkeypatch) -> None:
    (tmp_path / "clash_studies.py").write_text(
        "from mamlscope.features.studies import FigureStudy\n"
        "from mamlscope.features.studies.tsne import draw\n"
        "STUDY = FigureStudy(key='tsne', title='t', caption='c', draw=draw, position=1)\n"
    )
    install_distribution(tmp_path, "clash", f"[{feature_studies.GROUP}]\nmine = clash_studies\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    feature_studies.clear()
    try:
        with pytest.raises(PluginError, match=r"two entries are named 'tsne'.*entry point 'mine'"):
            study_keys()
    finally:
        sys.modules.pop("clash_studies", None)
        monkeypatch.undo()
        feature_studies.clear()


@pytest.mark.slow
def test_listing_the_studies_loads_no_plotting_library() -> None:
    """The rules read the registry while Snakemake parses them: no matplotlib then."""
    import subprocess

    code = (
        "import sys; from mamlscope.features.studies import study_keys; study_keys(); "
        "print('matplotlib' in sys.modules, 'sklearn' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


@pytest.mark.workflow
def test_the_rules_draw_a_plugged_study_per_model_and_side_by_side(plugin, tmp_path) -> None:
    from workflow_tools import TINY_CONFIG, TINY_RESULTS, copy_workflow, snakemake

    (tmp_path / "workflow").mkdir()
    folder = copy_workflow(tmp_path / "workflow")
    site = {"PYTHONPATH": str(tmp_path / "site")}  # where the plug-in's distribution lies
    result = snakemake("-n", "--cores", "1", "--configfile", str(TINY_CONFIG), cwd=folder, env=site)
    assert result.returncode == 0, result.stdout + result.stderr
    for path in ("digits8/maml/seed0/figures", "digits8/compare/seed0"):
        assert f"{TINY_RESULTS}/{path}/{plugin}.png" in result.stdout, path
