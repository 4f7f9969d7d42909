"""The conda environments of `snakemake --sdm conda` (envs/*.yaml).

No conda (nor mamba, nor a conda channel) is reachable from this project's machine, so no
environment is built here. What can be tested is: each file parses as a conda environment;
its pip part lists every dependency of pyproject.toml (the report environment also the
`report` extra) and nothing else, each pinned with `==` to a version that pyproject's range
admits and that `make` installed into the running environment (.venv); no pip entry
depends on where the file lies (Snakemake copies it to .snakemake/conda/, where `-e ..` or
a relative path names another folder); and pip resolves the pins against this machine's
package index from a copy of the file in an unrelated folder (a dry run, nothing is
installed).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
ENVS = {"mamlscope.yaml": (), "report.yaml": ("report",)}  # file -> pyproject extras
PATH_LIKE = re.compile(r"^(-|\.|/|~)|://|\s@\s|^file:")


def pyproject_requirements(extras: tuple[str, ...]) -> dict[str, Requirement]:
    """pyproject's dependencies and the given extras, by canonical name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    return {canonicalize_name(r.name): r for r in map(Requirement, lines)}


def env_parts(path: Path) -> tuple[list[str], list[str]]:
    """(conda dependencies, pip entries) of an environment file."""
    env = yaml.safe_load(path.read_text())
    assert isinstance(env, dict) and isinstance(env.get("dependencies"), list), path
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pips = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pips) == 1 and isinstance(pips[0], list), f"{path}: one pip: list expected"
    return conda, [str(entry) for entry in pips[0]]


def pins(entries: list[str], where: str) -> dict[str, str]:
    """``{canonical name: version}`` of ``name==version`` entries; anything else fails."""
    pinned: dict[str, str] = {}
    for entry in entries:
        assert not PATH_LIKE.search(entry), f"{where}: {entry!r} depends on a path or an option"
        try:
            req = Requirement(entry)
        except InvalidRequirement as exc:
            raise AssertionError(f"{where}: {entry!r} is not a requirement: {exc}") from exc
        specs = list(req.specifier)
        assert req.url is None and len(specs) == 1 and specs[0].operator == "==", (
            f"{where}: {entry!r} is not pinned as name==version"
        )
        name = canonicalize_name(req.name)
        assert name not in pinned, f"{where}: {req.name} listed twice"
        pinned[name] = specs[0].version
    return pinned


@pytest.mark.parametrize("name", sorted(ENVS))
def test_env_pins_every_dependency_to_the_installed_version(name: str) -> None:
    conda, entries = env_parts(ROOT / "envs" / name)
    pinned = pins(entries, name)
    wanted = pyproject_requirements(ENVS[name])
    assert sorted(pinned) == sorted(wanted), f"{name}: pip pins differ from pyproject's list"
    for key, req in wanted.items():
        assert req.specifier.contains(pinned[key], prereleases=True), (
            f"{name}: {key}=={pinned[key]} is outside pyproject's {req}"
        )
        try:
            installed = version(key)
        except PackageNotFoundError:
            pytest.fail(f"{key} is not installed here; run `make` first")
        assert pinned[key] == installed, (
            f"{name}: {key}=={pinned[key]}, but `make` installed {installed}: update the pin"
        )
    python = [d for d in conda if d.split("=")[0] == "python"]
    assert python == [f"python={sys.version_info.major}.{sys.version_info.minor}"], (
        f"{name}: conda's python pin {python} is not this Python's version"
    )
    assert "pip" in conda


def test_report_env_extends_the_job_env() -> None:
    """The report rules run the same library: every job pin, the same version."""
    base = pins(env_parts(ROOT / "envs" / "mamlscope.yaml")[1], "mamlscope.yaml")
    report = pins(env_parts(ROOT / "envs" / "report.yaml")[1], "report.yaml")
    assert {k: report.get(k) for k in base} == base


def test_path_entries_are_refused() -> None:
    """What the env files held before (`-e ..`) and other location-bound entries fail."""
    for entry in ["-e ..", "-e ..[report]", "./src", "mamlscope @ file:///x", "-r req.txt"]:
        with pytest.raises(AssertionError):
            pins([entry], "example")
    with pytest.raises(AssertionError, match="not pinned"):
        pins(["numpy>=1.26"], "example")


@pytest.mark.slow
def test_pip_resolves_the_pins_from_a_copy_elsewhere(tmp_path: Path) -> None:
    """pip resolves report.yaml's pins (a superset of mamlscope.yaml's, the test above)
    from a copy of the file in a temporary folder: a dry run against the configured index,
    reporting what it would install (about 30 s: torch's wheels are large)."""
    copy = tmp_path / "elsewhere" / "report.yaml"
    copy.parent.mkdir()
    shutil.copy(ROOT / "envs" / "report.yaml", copy)
    entries = env_parts(copy)[1]
    (copy.parent / "requirements.txt").write_text("\n".join(entries) + "\n")
    args = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
    args += ["--quiet", "--report", "report.json", "-r", "requirements.txt"]
    done = subprocess.run(args, cwd=copy.parent, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads((copy.parent / "report.json").read_text())
    resolved = {
        canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
        for item in report["install"]
    }
    for key, pin in pins(entries, "report.yaml").items():
        assert resolved.get(key) == pin, f"pip would install {key} {resolved.get(key)}"
