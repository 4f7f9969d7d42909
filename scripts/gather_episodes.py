"""Rule gather_episodes, under results/<experiment>/: every run's analyses and own
evaluation -> episodes.parquet; every run's CKA over training -> training_cka.parquet."""

from mamlscope.analyses import gather_episodes, gather_training_cka
from mamlscope.logs import logged
from mamlscope.runtime import set_threads

sm = snakemake  # noqa: F821 (injected by Snakemake)
with logged(sm.log[0]):
    set_threads(sm.threads)  # the rule's threads: for any numeric library it loads
    gather_episodes(
        analyses=list(sm.input.analyses),
        evaluations=list(sm.input.evaluations),
        test_episodes=dict(zip(sm.params.datasets, sm.input.test_episodes, strict=True)),
        protocols=sm.params.protocols,
        out=sm.output.table,
    )
    gather_training_cka(list(sm.input.training_cka), sm.output.training_cka)
