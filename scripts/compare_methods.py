"""Rule compare_methods: each figure study of every method side by side."""

from mamlscope.features.plots import compare_methods, figures_by_method
from mamlscope.features.studies import study_keys
from mamlscope.logs import logged
from mamlscope.runtime import set_threads

sm = snakemake  # noqa: F821 (injected by Snakemake)
w = sm.wildcards
with logged(sm.log[0]):
    set_threads(sm.threads)  # the rule's threads: for any numeric library it loads
    compare_methods(
        figures_by_method(list(sm.input)),
        {key: getattr(sm.output, key) for key in study_keys()},
        title=f"{w.dataset} · seed {w.seed}",
    )
