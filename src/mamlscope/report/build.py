"""The report's jobs: the rule graph, and the notebook executed then converted to HTML.

``build_report`` executes the template with papermill in a kernel of *this* Python (a
``python3`` kernel spec written for the job and put first on ``JUPYTER_PATH``, so neither
a user's nor the system's ``python3`` kernel is picked up), then converts it to one
self-contained HTML file with nbconvert, code hidden. It also writes the accuracy table
(CSV) and the training curves (PNG) for Snakemake's own report.

``write_rulegraph`` asks Snakemake for the workflow's rule graph in a child process,
``--rulegraph --nolock``: printing a graph never takes the lock or starts a job, and
ignores the files the running workflow has marked incomplete, so it is safe to run
while the outer workflow runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from mamlscope.errors import MamlscopeError
from mamlscope.io import atomic_path
from mamlscope.report import plots
from mamlscope.report.results import load_results, pooled_accuracy

log = logging.getLogger("mamlscope")
KERNEL = "python3"
HTML_TEMPLATE = "mamlscope"  # report/nbconvert/mamlscope: nbconvert's lab, offline


def write_rulegraph(
    snakefile: str | os.PathLike[str],
    workdir: str | os.PathLike[str],
    config: Mapping[str, Any],
    out_dot: str | os.PathLike[str],
) -> None:
    """Write the workflow's rule graph (DOT) for ``config`` to ``out_dot``."""
    with tempfile.TemporaryDirectory() as tmp:
        configfile = Path(tmp) / "config.yaml"
        configfile.write_text(yaml.safe_dump(json.loads(json.dumps(dict(config)))))
        cmd = [
            sys.executable, "-m", "snakemake", "--rulegraph", "--nolock",
            "--snakefile", str(Path(snakefile).resolve()),
            "--directory", str(Path(workdir).resolve()),
            "--configfile", str(configfile),
        ]  # fmt: skip
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    dot = run.stdout
    start = dot.find("digraph")
    if run.returncode != 0 or start < 0:
        raise MamlscopeError(
            f"snakemake --rulegraph failed (exit {run.returncode}):\n{run.stderr[-3000:]}"
        )
    with atomic_path(out_dot) as tmp_dot:
        tmp_dot.write_text(dot[start:])


@contextlib.contextmanager
def this_python_kernel() -> Iterator[str]:
    """A ``python3`` kernel spec running ``sys.executable``, first on ``JUPYTER_PATH``."""
    old = os.environ.get("JUPYTER_PATH")
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "kernels" / KERNEL
        spec.mkdir(parents=True)
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        kernel = {"argv": argv, "display_name": "Python 3 (mamlscope)", "language": "python"}
        (spec / "kernel.json").write_text(json.dumps(kernel))
        os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [tmp, old]))
        try:
            yield KERNEL
        finally:
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old


def execute_notebook(
    template: str | os.PathLike[str],
    out_notebook: str | os.PathLike[str],
    parameters: Mapping[str, Any],
    cwd: str | os.PathLike[str],
) -> None:
    """Run ``template`` with papermill (its ``parameters`` cell replaced) into ``out_notebook``."""
    import papermill as pm

    with this_python_kernel() as kernel, atomic_path(out_notebook) as tmp:
        pm.execute_notebook(
            str(template),
            str(tmp),
            parameters=dict(parameters),
            kernel_name=kernel,
            cwd=str(cwd),
            progress_bar=False,
            log_output=False,
        )


def notebook_to_html(
    notebook: str | os.PathLike[str],
    out_html: str | os.PathLike[str],
    templates: str | os.PathLike[str],
) -> None:
    """Convert an executed notebook to HTML with the code and prompts hidden.

    ``templates`` holds nbconvert's ``mamlscope`` template (report/nbconvert): the lab
    template without the MathJax and require.js it would fetch from the internet.
    """
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook), as_version=4)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    if errors:
        raise MamlscopeError(f"{notebook} holds {len(errors)} error output(s); see its cells")
    exporter = HTMLExporter(
        template_name=HTML_TEMPLATE,
        extra_template_basedirs=[str(Path(templates).resolve())],
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
    )
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": "mamlscope report"}})
    with atomic_path(out_html) as tmp:
        tmp.write_text(body, encoding="utf-8")


def build_report(
    *,
    template: str | os.PathLike[str],
    nbconvert_templates: str | os.PathLike[str],
    results: str | os.PathLike[str],
    config: Mapping[str, Any],
    rulegraph: str | os.PathLike[str],
    out_notebook: str | os.PathLike[str],
    out_html: str | os.PathLike[str],
    out_accuracy: str | os.PathLike[str],
    out_curves: str | os.PathLike[str],
) -> Path:
    """The report job: the accuracy CSV, the curves PNG, the executed notebook, the HTML."""
    config = json.loads(json.dumps(dict(config)))  # plain types, as papermill writes them
    loaded = load_results(results, config)
    pooled = pooled_accuracy(loaded)
    table = pooled.assign(
        accuracy_pct=(100 * pooled["mean"]).round(2),
        ci95_pct=(100 * pooled["ci95"]).round(2),
        per_seed_pct=[" ".join(f"{100 * v:.2f}" for v in s) for s in pooled["seed_means"]],
        plain_test_accuracy_pct=(100 * pooled["plain"]).round(2),
    )[["dataset", "method", "way", "shot", "batchnorm", "seeds", "episodes", "accuracy_pct",
       "ci95_pct", "per_seed_pct", "plain_test_accuracy_pct"]]  # fmt: skip
    with atomic_path(out_accuracy) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(out_curves) as tmp:
        plots.training_curves_all(loaded).savefig(tmp, format="png", dpi=100)
    results_dir = Path(results).resolve()
    execute_notebook(
        template,
        out_notebook,
        parameters={
            "results_dir": str(results_dir),
            "config": config,
            "rulegraph": str(Path(rulegraph).resolve()),
        },
        cwd=results_dir,
    )
    notebook_to_html(out_notebook, out_html, nbconvert_templates)
    log.info("report written to %s", out_html)
    return Path(out_html)
