"""Rule train: one method on one dataset and seed -> checkpoint and metrics."""

from mamlscope.logs import logged
from mamlscope.train import run_training

sm = snakemake  # noqa: F821 (injected by Snakemake)
with logged(sm.log[0]):
    run_training(
        images=sm.input.images,
        index=sm.input.index,
        meta=sm.input.meta,
        pools=sm.input.pools,
        val_episodes=sm.input.val,
        config=sm.params.train,
        method=sm.wildcards.method,
        seed=int(sm.wildcards.seed),
        device=sm.params.device,
        checkpoint=sm.output.checkpoint,
        metrics=sm.output.metrics,
        snapshots=sm.output.snapshots,
        # Recorded in the checkpoint, not read for training: the whole dataset config, so
        # a standalone checkpoint knows its data and evaluation settings. Deliberately not
        # a param, so that edits training does not read do not retrain.
        saved_config=sm.config["datasets"][sm.wildcards.dataset],
        threads=sm.threads,
        # How often to write the resume state (.resume/ beside the checkpoint): read here,
        # not a param, since it changes no result and must rerun nothing.
        resume_every_steps=sm.config["resume_every_steps"],
        resume_every_seconds=sm.config["resume_every_seconds"],
    )
