"""Rule plot_features: the original project's figure studies of one trained model."""

from mamlscope.features.plots import plot_model_features
from mamlscope.features.studies import study_keys
from mamlscope.logs import logged

sm = snakemake  # noqa: F821 (injected by Snakemake)
w = sm.wildcards
with logged(sm.log[0]):
    plot_model_features(
        checkpoint=sm.input.checkpoint,
        images=sm.input.images,
        index=sm.input.index,
        meta=sm.input.meta,
        probe=sm.input.probe,
        activations=sm.input.activations,
        metrics=sm.input.metrics,
        features=sm.params.features,
        title=f"{w.dataset} · {w.method} · seed {w.seed}",
        out={key: getattr(sm.output, key) for key in study_keys()},
        threads=sm.threads,
    )
