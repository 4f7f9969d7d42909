"""Rule extract_activations: every layer of one model on the probe and adapted episodes."""

from mamlscope.evaluate import EvalSettings
from mamlscope.features.extract import extract_activations
from mamlscope.logs import logged

sm = snakemake  # noqa: F821 (injected by Snakemake)
with logged(sm.log[0]):
    extract_activations(
        checkpoint=sm.input.checkpoint,
        images=sm.input.images,
        index=sm.input.index,
        meta=sm.input.meta,
        probe=sm.input.probe,
        test_episodes=sm.input.test,
        settings=EvalSettings.from_config(sm.params.evaluation, sm.wildcards.method),
        adapt_episodes=sm.params.adapt_episodes,
        device=sm.params.device,
        out=sm.output.activations,
        threads=sm.threads,
    )
