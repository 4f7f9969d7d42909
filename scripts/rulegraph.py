"""Rule rulegraph: the workflow's rule graph as DOT, from `snakemake --rulegraph --nolock`."""

from mamlscope.logs import logged
from mamlscope.report.build import write_rulegraph
from mamlscope.runtime import set_threads

sm = snakemake  # noqa: F821 (injected by Snakemake)
with logged(sm.log[0]):
    set_threads(sm.threads)  # the rule's threads: for any numeric library it loads
    # The config is read to call Snakemake with it, not as a param: the rules and their
    # links, not the config's values, make the graph.
    write_rulegraph(sm.input.snakefile, ".", sm.config, sm.output.dot)
