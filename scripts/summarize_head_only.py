"""Rule summarize_head_only: every model's head-only rows -> results/head_only.{parquet,md}."""

from mamlscope.features.head_only import gather_head_only
from mamlscope.logs import logged
from mamlscope.runtime import set_threads

sm = snakemake  # noqa: F821 (injected by Snakemake)
with logged(sm.log[0]):
    set_threads(sm.threads)  # the rule's threads: for any numeric library it loads
    gather_head_only(list(sm.input.tables), sm.output.table, sm.output.markdown)
