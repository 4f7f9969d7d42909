"""The figure studies drawn for every trained model, one module each, and their table.

Each module of this package that defines ``STUDY = FigureStudy(...)``
(:class:`~mamlscope.features.studies.base.FigureStudy`) is a study: the figure job draws
it for every model (``figures/{key}.png``), the comparison job puts the methods' figures
side by side, the rules name the files by its key and the report shows its title and
caption. :func:`study_keys` lists them in display order, :func:`study` looks one up.
Adding a study is adding one such module, or, without editing mamlscope, declaring an
entry point in a package of your own::

    [project.entry-points."mamlscope.feature_studies"]
    weight_histogram = "my_package.weight_histogram:STUDY"

The workflow reads this table while Snakemake parses the rules, so a study module imports
matplotlib (:mod:`mamlscope.features.figures`) inside its ``draw``: listing the studies
then costs no plotting library.
"""

from mamlscope.features.studies.base import FigureStudy, StudyContext
from mamlscope.features.studies.registry import (
    GROUP,
    caption_file,
    clear,
    registry,
    studies,
    study,
    study_keys,
)

__all__ = [
    "GROUP",
    "FigureStudy",
    "StudyContext",
    "caption_file",
    "clear",
    "registry",
    "studies",
    "study",
    "study_keys",
]
