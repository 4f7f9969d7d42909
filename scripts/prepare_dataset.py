"""Rule prepare_dataset: read one source, write images.npy, index.parquet and meta.json."""

from pathlib import Path

from mamlscope.data.prepared import prepare_dataset
from mamlscope.logs import logged
from mamlscope.runtime import set_threads

sm = snakemake  # noqa: F821 (injected by Snakemake)
with logged(sm.log[0]):
    set_threads(sm.threads)  # the rule's threads: for any numeric library it loads
    # Writes the folder whole: images, index and meta (names in mamlscope.data.prepared).
    prepare_dataset(
        sm.wildcards.dataset,
        sm.params.dataset,
        Path(sm.output.index).parent,
        data_root=sm.params.data_root,
    )
