"""The report: every result of a run gathered in one notebook, executed by the workflow.

The notebook template (``report/report.ipynb``) only calls these functions and displays
what they return; every table, figure and sentence is computed here from the results
tree, so the report is regenerated from the results whenever they change.

- :mod:`~mamlscope.report.results`: the run layout, loading a run's files, the experiment
  tables (from the resolved config) and the accuracy table (seeds pooled per episode).
- :mod:`~mamlscope.report.studies`: the feature studies' figures and CKA tables (whatever
  of them the run produced).
- :mod:`~mamlscope.report.verdicts`: rapid learning or feature reuse, one verdict per
  dataset, inner-loop method and BatchNorm mode, by paired accuracy (:mod:`mamlscope.stats`).
- :mod:`~mamlscope.report.analyses`: the analyses' tables and figures (layer freezing,
  nearest centroid, test-steps sweep, the baseline's protocols, like for like).
- :mod:`~mamlscope.report.findings`: the findings, sentences generated from the numbers.
- :mod:`~mamlscope.report.plots`: training curves and the rule graph picture.
- :mod:`~mamlscope.report.show`: turning the above into notebook output.
- :mod:`~mamlscope.report.build`: the rule graph job and the report job (papermill, then
  nbconvert to HTML with the code hidden).
- :mod:`~mamlscope.report.results_doc`: the Markdown blocks of docs/results.md and the
  README, written from a results tree (``mamlscope results-doc``, ``make results-doc``).
"""

from mamlscope.report.findings import findings
from mamlscope.report.results import (
    REFERENCE,
    Results,
    accuracy_table,
    experiment_tables,
    load_results,
    reference_note,
)
from mamlscope.report.studies import cka_table, figure_studies
from mamlscope.report.verdicts import verdicts

__all__ = [
    "REFERENCE",
    "Results",
    "accuracy_table",
    "cka_table",
    "experiment_tables",
    "figure_studies",
    "findings",
    "load_results",
    "reference_note",
    "verdicts",
]
