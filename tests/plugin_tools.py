"""A user's package "installed" for a test: the package folder and a ``.dist-info`` beside it.

``importlib.metadata`` finds a ``<name>-<version>.dist-info`` folder on ``sys.path`` (or
``PYTHONPATH`` for a subprocess) as an installed distribution, with the entry points its
``entry_points.txt`` declares: what ``pip install`` of a package with
``[project.entry-points."<group>"]`` writes, without installing anything.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path


def install_distribution(root: Path, name: str, entry_points: str) -> None:
    """A distribution ``name`` on ``sys.path`` (``root``) declaring ``entry_points``."""
    dist = root / f"{name}-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent(entry_points))


def forget_package(package: str) -> None:
    """Drop ``package`` and its modules from ``sys.modules`` (a later test may write another
    package of that name)."""
    for module in [m for m in sys.modules if m == package or m.startswith(f"{package}.")]:
        del sys.modules[module]
