"""Rule report: the notebook executed over the results tree, then converted to HTML."""

from pathlib import Path

from mamlscope.logs import logged
from mamlscope.report.build import build_report
from mamlscope.runtime import set_threads

sm = snakemake  # noqa: F821 (injected by Snakemake)
with logged(sm.log[0]):
    set_threads(sm.threads)  # the rule's threads: for any numeric library it loads
    build_report(
        template=sm.input.template,
        # report/nbconvert, the folder of the theme's template folder.
        nbconvert_templates=Path(sm.input.theme[0]).parents[1],
        results=Path(sm.input.runs).parent,
        config=sm.params.experiment,
        rulegraph=sm.input.rulegraph,
        out_notebook=sm.output.notebook,
        out_html=sm.output.html,
        out_accuracy=sm.output.accuracy,
        out_curves=sm.output.curves,
    )
