"""Feature studies: what a trained network's layers respond to, MAML against the baseline.

Modules (import each directly; nothing is re-exported here, so importing one does not
pull in matplotlib or scikit-learn):

* :mod:`~mamlscope.features.activations`: every named layer's output for a batch, under
  the model's BatchNorm policy, optionally with adapted weights; activations to and from
  Parquet in one long layout.
* :mod:`~mamlscope.features.probe`: a fixed, class-balanced set of probe examples per seed.
* :mod:`~mamlscope.features.saliency`: input-gradient saliency maps (Simonyan et al. 2014).
* :mod:`~mamlscope.features.maximise`: activation maximisation with Olah et al.'s
  regularisers (decorrelated Fourier image, jitter, scaling, rotation) as composable parts.
* :mod:`~mamlscope.features.embedding`: 2-D t-SNE and PCA embeddings, deterministic per seed.
* :mod:`~mamlscope.features.figures`: the figures (first-layer filters, embeddings, extreme
  examples, saliency, training curves, panels side by side), one style, saved atomically.
* :mod:`~mamlscope.features.studies`: the figure studies drawn for every model, one module
  each (``STUDY = FigureStudy(...)``), and their registry (plug-ins by entry point).

Layer similarity (linear CKA) lives in :mod:`mamlscope.similarity`.
"""
