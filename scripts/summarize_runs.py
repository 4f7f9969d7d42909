"""Rule summarize_runs: every run's evaluation row -> runs.parquet and runs.md, under
results/<experiment>/."""

from mamlscope.logs import logged
from mamlscope.runs import gather_runs
from mamlscope.runtime import set_threads

sm = snakemake  # noqa: F821 (injected by Snakemake)
with logged(sm.log[0]):
    set_threads(sm.threads)  # the rule's threads: for any numeric library it loads
    gather_runs(list(sm.input.tables), sm.output.table, sm.output.markdown)
