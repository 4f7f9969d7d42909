"""Rule evaluate: a checkpoint on its dataset's fixed test episodes -> JSON and one row."""

from mamlscope.evaluate import EvalSettings, run_evaluation
from mamlscope.logs import logged

sm = snakemake  # noqa: F821 (injected by Snakemake)
with logged(sm.log[0]):
    run_evaluation(
        checkpoint=sm.input.checkpoint,
        images=sm.input.images,
        index=sm.input.index,
        meta=sm.input.meta,
        pools=sm.input.pools,
        test_episodes=sm.input.test,
        settings=EvalSettings.from_config(sm.params.evaluation, sm.wildcards.method),
        dataset=sm.wildcards.dataset,
        device=sm.params.device,
        summary_json=sm.output.json,
        summary_parquet=sm.output.table,
        threads=sm.threads,
    )
