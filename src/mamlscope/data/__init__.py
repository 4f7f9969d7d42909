"""Data: sources and their downloads, the prepared arrays, pools, splits and episodes.

* :mod:`~mamlscope.data.sources`: reading a dataset's source through the source registry,
  :mod:`~mamlscope.data.readers` (one module per source, plug-ins by entry point), whose
  readers share :mod:`~mamlscope.data.archives` (checksums, archives, image decoding) and
  :mod:`~mamlscope.data.images` (one image file read faithfully: 16-bit scaling, alpha on
  white, the pixel limit);
* :mod:`~mamlscope.data.facts`: what each source is known to hold before it is read;
* :mod:`~mamlscope.data.prepared`: one dataset as ``images.npy``, ``index.parquet``,
  ``meta.json``;
* :mod:`~mamlscope.data.pools`, :mod:`~mamlscope.data.splits`: meta-train/val/test pools
  and the fixed episodes of a seed;
* :mod:`~mamlscope.data.tasks`, :mod:`~mamlscope.data.episode_table`: episodes as tensors,
  sampled on the fly or read from a table.
"""
