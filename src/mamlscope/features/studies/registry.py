"""The figure-study table: every registered :class:`FigureStudy` by key, in display order.

Built from this package's modules and the ``mamlscope.feature_studies`` entry points of
installed packages (:func:`mamlscope.plugins.load_registry`), once per process, ordered by
each study's ``position`` (ties by key). The figure rules, the figure jobs and the report
all read it, so a study is listed in one place: its own module.
"""

from __future__ import annotations

import functools
import os

from mamlscope.errors import ConfigError
from mamlscope.features.studies.base import FigureStudy
from mamlscope.plugins import load_registry

GROUP = "mamlscope.feature_studies"  # the entry point group a plug-in study registers under
# The Snakemake report's caption for a study without its own `{key}.rst` caption file.
GENERIC_CAPTION = "study.rst"


@functools.cache
def registry() -> dict[str, FigureStudy]:
    """Every registered study by key, in display order (loaded once; see :func:`clear`)."""
    table = load_registry("mamlscope.features.studies", GROUP, "STUDY", FigureStudy, _key)
    return dict(sorted(table.items(), key=lambda item: (item[1].position, item[0])))


def _key(study: FigureStudy) -> str:
    return study.key


def clear() -> None:
    """Forget the loaded table, so the next lookup reads the modules and entry points again
    (tests that register a study)."""
    registry.cache_clear()


def studies() -> tuple[FigureStudy, ...]:
    """Every registered study, in display order."""
    return tuple(registry().values())


def study_keys() -> list[str]:
    """Every registered study's key (its PNG's stem), in display order."""
    return list(registry())


def study(key: str) -> FigureStudy:
    """The registered study ``key``; a ConfigError lists the registered keys."""
    table = registry()
    if key not in table:
        raise ConfigError(
            f"unknown figure study {key!r}; use one of {list(table)} (a study of your own: "
            f"define STUDY = FigureStudy(...) in a module registered under the entry point "
            f"group {GROUP!r}, see docs/extending.md)"
        )
    return table[key]


def caption_file(key: str, folder: str | os.PathLike[str]) -> str:
    """The name of the Snakemake report caption of study ``key`` in ``folder``: its own
    ``{key}.rst`` when there is one, else :data:`GENERIC_CAPTION`, so that a new study
    needs no file outside its module."""
    own = f"{key}.rst"
    return own if os.path.isfile(os.path.join(folder, own)) else GENERIC_CAPTION
