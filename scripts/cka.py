"""Rule cka: layer similarity between methods and before/after adaptation."""

from mamlscope.features.cka_study import run_cka
from mamlscope.logs import logged
from mamlscope.runtime import set_threads

sm = snakemake  # noqa: F821 (injected by Snakemake)
with logged(sm.log[0]):
    set_threads(sm.threads)  # the rule's threads: for any numeric library it loads
    run_cka(
        dict(zip(sm.params.methods, sm.input, strict=True)),
        dataset=sm.wildcards.dataset,
        seed=int(sm.wildcards.seed),
        table_out=sm.output.table,
        methods_png=sm.output.methods,
        adaptation_png=sm.output.adaptation,
    )
