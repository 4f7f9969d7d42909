"""The report rule on a tiny real run: its HTML, rendered by Chromium, and what reruns it.

The session's tiny pipeline (tests/tiny.yaml, conftest.py) runs for real once; the tests
read its report and dry-run edits against the up-to-date tree.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
import yaml
from workflow_tools import TINY, TINY_RESULTS, planned_wildcards, snakemake

from mamlscope.features.studies import study_keys

SECTIONS = (
    "The experiment",
    "Findings",
    "Accuracy",
    "Training curves",
    "Feature studies",
    "Rapid learning or feature reuse?",
    "Representational similarity (CKA)",
    "The workflow",
)


def report_dir(folder: Path) -> Path:
    return folder / TINY_RESULTS / "report"


def dry_run(folder: Path, configfile: str = "tiny.yaml") -> list[tuple[str, str]]:
    result = snakemake("-n", "--cores", "1", "--configfile", configfile, cwd=folder)
    assert result.returncode == 0, result.stdout + result.stderr
    return planned_wildcards(result.stdout)


@pytest.mark.workflow
@pytest.mark.slow
def test_the_report_holds_every_section_figure_and_table(tiny_pipeline: Path):
    html = (report_dir(tiny_pipeline) / "report.html").read_text()
    for section in SECTIONS:
        assert f">{section}" in html, section
    # Every figure the feature rules made is embedded, byte for byte.
    compare = tiny_pipeline / TINY_RESULTS / "digits8" / "compare" / "seed0"
    pngs = sorted(compare.glob("*.png"))
    assert {p.stem for p in pngs} >= {*study_keys(), "cka_methods", "cka_adaptation"}
    for png in pngs:
        assert base64.b64encode(png.read_bytes()).decode() in html, png.name
    assert "not produced by this run" not in html
    # The training curves and, per dataset, the layer-freezing, test-steps, over-training and
    # CKA-over-training figures drawn by the report, and every image a data URI.
    assert html.count("<img ") == len(pngs) + 1 + 4
    images = re.findall(r"<img [^>]*>", html)
    assert all('src="data:image/png;base64,' in i and 'alt="' in i for i in images)
    # Tables: datasets, baseline and MAML settings, accuracy, CKA; the analyses' verdicts,
    # layer freezing, nearest centroid, test steps, the baseline's protocols, like for like,
    # and the verdict over training.
    assert html.count('class="dataframe mamlscope-table"') == 5 + 7
    assert "BatchNorm at test" in html and "across seeds (95% CI)" in html
    assert "Best method per dataset" in html and "digits8</strong>: " in html
    assert "digits8 (test classes seen in training)" in html  # protocol examples
    assert "like for like" in html and "paired 95% interval" in html
    if shutil.which("dot"):
        assert "<svg" in html and "summarize_runs" in html
    # No code shown, and the kernel was this environment's Python.
    assert "show.experiment(results)" not in html and "load_results" not in html
    assert f"at <code>{sys.executable}</code>" in html


@pytest.mark.workflow
@pytest.mark.slow
def test_the_executed_notebook_has_no_errors_or_warnings(tiny_pipeline: Path):
    nb = nbformat.read(report_dir(tiny_pipeline) / "report.ipynb", as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert outputs
    assert not [o for o in outputs if o.output_type == "error"]
    assert not [o for o in outputs if o.output_type == "stream" and o.name == "stderr"]
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and '"digits8"' in injected[0].source
    accuracy = (report_dir(tiny_pipeline) / "accuracy.csv").read_text().splitlines()
    assert accuracy[0].startswith("dataset,method,way,shot,batchnorm,seeds,episodes,accuracy_pct")
    assert len(accuracy) == 1 + len(yaml.safe_load(TINY)["methods"])
    dot = (report_dir(tiny_pipeline) / "rulegraph.dot").read_text()
    assert dot.startswith("digraph") and "report" in dot and "train" in dot


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium not installed (apt-get install chromium); CI runs this test")
    return exe


def headless(exe: str, *args: str) -> subprocess.CompletedProcess[str]:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--virtual-time-budget=15000", "--run-all-compositor-stages-before-draw"]  # fmt: skip
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=180)


# Run on load: each image's alt text, whether it loaded and its decoded size, into the DOM.
PROBE = """<script>
window.addEventListener('load', function () {
  var images = Array.prototype.map.call(document.images, function (i) {
    return [i.alt, i.complete, i.naturalWidth, i.naturalHeight];
  });
  document.body.setAttribute('data-images', JSON.stringify(images));
});
</script>"""


@pytest.mark.workflow
@pytest.mark.slow
def test_the_report_renders_in_chromium(tiny_pipeline: Path, tmp_path: Path):
    from PIL import Image

    exe = chromium()
    html = report_dir(tiny_pipeline) / "report.html"
    shot = tmp_path / "first_screen.png"
    result = headless(exe, "--window-size=1280,1600", f"--screenshot={shot}", html.as_uri())
    assert shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.convert("RGB").getcolors(maxcolors=1) is None  # not a blank page
    probed = tmp_path / "probed.html"
    probed.write_text(html.read_text().replace("</body>", PROBE + "</body>"))
    dom = headless(exe, "--dump-dom", probed.as_uri()).stdout
    found = re.search(r'data-images="([^"]*)"', dom)
    assert found, dom[-2000:]
    images = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert len(images) == html.read_text().count("<img ")
    broken = [alt for alt, complete, width, height in images if not (complete and width and height)]
    assert not broken, broken


@pytest.mark.workflow
@pytest.mark.slow
def test_an_up_to_date_tree_plans_nothing(tiny_pipeline: Path):
    assert dry_run(tiny_pipeline) == []


@pytest.mark.workflow
@pytest.mark.slow
def test_editing_the_notebook_reruns_only_the_report(tiny_pipeline: Path):
    template = tiny_pipeline / "report" / "report.ipynb"
    original, stat = template.read_bytes(), template.stat()
    try:
        nb = nbformat.read(template, as_version=4)
        nb.cells.append(nbformat.v4.new_markdown_cell("One more paragraph."))
        nbformat.write(nb, template)
        assert dry_run(tiny_pipeline) == [("report", "")]
    finally:
        template.write_bytes(original)
        os.utime(template, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert dry_run(tiny_pipeline) == []


@pytest.mark.workflow
@pytest.mark.slow
def test_adding_a_seed_runs_only_the_new_jobs_and_the_report(tiny_pipeline: Path):
    (tiny_pipeline / "two_seeds.yaml").write_text(TINY.replace("seeds: [0]", "seeds: [0, 1]"))
    planned = dry_run(tiny_pipeline, "two_seeds.yaml")
    rules = {rule for rule, _ in planned}
    assert "report" in rules and "rulegraph" not in rules and "prepare_dataset" not in rules
    per_seed = [(rule, w) for rule, w in planned if w]
    assert per_seed and all("seed=1" in w for _, w in per_seed), planned
    # One split per dataset, shared by every seed: a new seed plans no split.
    assert {r for r, _ in per_seed} >= {"train", "evaluate", "analyze"}
    assert [r for r, w in planned if not w] == sorted(
        ["gather_episodes", "report", "summarize_runs"]
    ), planned


@pytest.mark.workflow
@pytest.mark.slow
def test_snakemake_report_gathers_the_marked_outputs(tiny_pipeline: Path):
    result = snakemake(
        "--report", f"{TINY_RESULTS}/report.zip", "--configfile", "tiny.yaml", cwd=tiny_pipeline
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    with zipfile.ZipFile(tiny_pipeline / TINY_RESULTS / "report.zip") as archive:
        names = archive.namelist()
        for marked in ("report.html", "accuracy.csv", "curves.png", "runs.md"):
            assert any(n.endswith("/" + marked) for n in names), (marked, names[:40])
