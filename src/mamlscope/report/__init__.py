"""The report: every result of a run gathered in one notebook, executed by the workflow.

The notebook template (``report/report.ipynb``) only calls these functions and displays
what they return; every table, figure and sentence is computed here from the results
tree, so the report is regenerated from the results whenever they change.

- :mod:`~mamlscope.report.results`: the run layout, loading a run's files, the experiment
  tables (from the resolved config) and the accuracy table (seeds pooled per episode).
- :mod:`~mamlscope.report.studies`: the feature studies' figures, CKA and head-only tables
  (whatever of them the run produced).
- :mod:`~mamlscope.report.findings`: the findings, sentences generated from the numbers.
- :mod:`~mamlscope.report.plots`: training curves and the rule graph picture.
- :mod:`~mamlscope.report.show`: turning the above into notebook output.
- :mod:`~mamlscope.report.build`: the rule graph job and the report job (papermill, then
  nbconvert to HTML with the code hidden).
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
from mamlscope.report.studies import cka_table, feature_reuse, figure_studies, head_only_table

__all__ = [
    "REFERENCE",
    "Results",
    "accuracy_table",
    "cka_table",
    "experiment_tables",
    "feature_reuse",
    "figure_studies",
    "findings",
    "head_only_table",
    "load_results",
    "reference_note",
]
