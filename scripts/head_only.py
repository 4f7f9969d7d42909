"""Rule head_only: accuracy when only the head adapts, beside full adaptation."""

from mamlscope.evaluate import EvalSettings
from mamlscope.features.head_only import run_head_only
from mamlscope.logs import logged

sm = snakemake  # noqa: F821 (injected by Snakemake)
with logged(sm.log[0]):
    run_head_only(
        checkpoint=sm.input.checkpoint,
        evaluation=sm.input.evaluation,
        images=sm.input.images,
        index=sm.input.index,
        meta=sm.input.meta,
        test_episodes=sm.input.test,
        settings=EvalSettings.from_config(sm.params.evaluation, sm.wildcards.method),
        dataset=sm.wildcards.dataset,
        device=sm.params.device,
        out=sm.output.table,
        threads=sm.threads,
    )
