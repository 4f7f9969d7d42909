"""Rule train: one method on one dataset and seed -> checkpoint and metrics."""

from pathlib import Path

from mamlscope.logs import logged
from mamlscope.train import run_training

sm = snakemake  # noqa: F821 (injected by Snakemake)
with logged(sm.log[0]):
    run_training(
        data_dir=Path(sm.input.data).parent,
        split_dir=Path(sm.input.pools).parent,
        ds_cfg=sm.params.dataset,
        method=sm.wildcards.method,
        seed=int(sm.wildcards.seed),
        device=sm.params.device,
        checkpoint=sm.output.checkpoint,
        metrics=sm.output.metrics,
        threads=sm.threads,
    )
