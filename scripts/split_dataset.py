"""Rule split_dataset: pools by the dataset's protocol and the fixed val/test episodes."""

from pathlib import Path

from mamlscope.data.splits import write_split
from mamlscope.io import read_parquet
from mamlscope.logs import logged
from mamlscope.runtime import set_threads

sm = snakemake  # noqa: F821 (injected by Snakemake)
with logged(sm.log[0]):
    set_threads(sm.threads)  # the rule's threads: for any numeric library it loads
    # write_split writes the split's folder whole (pools, episodes_val, episodes_test).
    write_split(
        read_parquet(sm.input.index),
        sm.params.split["split"],
        sm.params.split["episodes"],
        int(sm.params.split["split"]["seed"]),
        Path(sm.output.pools).parent,
    )
