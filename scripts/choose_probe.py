"""Rule choose_probe: class-balanced meta-test images shared by every model's feature study."""

from mamlscope.features.extract import write_probe
from mamlscope.logs import logged
from mamlscope.runtime import set_threads

sm = snakemake  # noqa: F821 (injected by Snakemake)
with logged(sm.log[0]):
    set_threads(sm.threads)  # the rule's threads: for any numeric library it loads
    write_probe(
        sm.input.index,
        sm.input.pools,
        images=sm.params.images,
        seed=int(sm.params.split["split"]["seed"]),
        out=sm.output.probe,
    )
