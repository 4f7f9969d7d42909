"""Rule analyze: one trained run's accuracy-based analyses, per test episode, at the final
weights and each training snapshot; and its per-episode CKA over training."""

from mamlscope.analyses import run_analyses
from mamlscope.evaluate import EvalSettings
from mamlscope.logs import logged

sm = snakemake  # noqa: F821 (injected by Snakemake)
with logged(sm.log[0]):
    run_analyses(
        checkpoint=sm.input.checkpoint,
        images=sm.input.images,
        index=sm.input.index,
        meta=sm.input.meta,
        test_episodes=sm.input.test,
        settings=EvalSettings.from_config(sm.params.evaluation, sm.wildcards.method),
        analyses=sm.params.analyses,
        protocol=sm.params.protocol,
        dataset=sm.wildcards.dataset,
        device=sm.params.device,
        out=sm.output.table,
        snapshots=sm.input.snapshots,
        cka_out=sm.output.training_cka,
        adapt_episodes=sm.params.adapt_episodes,
        threads=sm.threads,
    )
