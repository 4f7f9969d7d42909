"""Rule evaluate: a checkpoint on its dataset's fixed test episodes -> JSON and one row."""

from pathlib import Path

from mamlscope.logs import logged
from mamlscope.pipeline import run_evaluation

sm = snakemake  # noqa: F821 (injected by Snakemake)
with logged(sm.log[0]):
    run_evaluation(
        checkpoint=sm.input.checkpoint,
        data_dir=Path(sm.input.data).parent,
        split_dir=Path(sm.input.test).parent,
        dataset=sm.wildcards.dataset,
        device=sm.params.device,
        summary_json=sm.output.json,
        summary_parquet=sm.output.table,
        threads=sm.threads,
    )
