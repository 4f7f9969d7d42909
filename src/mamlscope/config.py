"""Loading and validating an experiment config before any job starts.

The JSON schema (`config/schema.yaml`, shipped in the package as `schema.yaml`) says what
every key means and fills in defaults; the checks here add what a schema cannot see:
paths on disk and class counts known in advance.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from mamlscope.errors import ConfigError

# Classes each source is known to have (before rotation augmentation); None: read from data.
KNOWN_CLASSES: dict[str, int | None] = {
    "mnist5k": 10,
    "digits": 10,
    "mnist": 10,
    "cifar10": 10,
    "omniglot": None,
    "imagefolder": None,
}
# Sections a dataset may override over the top-level ones.
OVERRIDABLE = ("model", "baseline", "maml")


def load_schema() -> dict[str, Any]:
    """The config schema shipped with the package."""
    text = resources.files("mamlscope").joinpath("schema.yaml").read_text()
    return yaml.safe_load(text)


def _with_defaults(validator_class: type) -> type:
    """A validator that also writes each property's `default` into the instance.

    This is the recipe from the jsonschema FAQ: defaults are set before the properties
    are validated, so a filled-in default is itself checked.
    """
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):  # type: ignore[no-untyped-def]
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def _key(path: Any) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else "(top level)"


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def validate_config(config: Mapping[str, Any], *, check_paths: bool = True) -> dict[str, Any]:
    """Return a validated copy of ``config`` with defaults filled in.

    Raises ConfigError naming the first offending key (all schema errors are listed).
    """
    cfg = copy.deepcopy(dict(config))
    # `snakemake --config seeds=[0,1]` hands over the items as strings.
    seeds = cfg.get("seeds")
    if isinstance(seeds, list):
        cfg["seeds"] = [int(s) if isinstance(s, str) and s.strip().isdigit() else s for s in seeds]
    # Merge the top-level sections into each dataset's before defaults are filled, so a
    # dataset inherits what the top level sets and overrides only what it names.
    datasets = cfg.get("datasets")
    if isinstance(datasets, dict):
        for ds in datasets.values():
            if not isinstance(ds, dict):
                continue
            for section in OVERRIDABLE:
                top, own = cfg.get(section), ds.get(section)
                if isinstance(top, Mapping) and (own is None or isinstance(own, Mapping)):
                    ds[section] = _deep_merge(top, own or {})
    validator = _Validator(load_schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  {_key(e.absolute_path)}: {e.message}" for e in errors]
        raise ConfigError("invalid config:\n" + "\n".join(lines))
    for name, ds in cfg["datasets"].items():
        _check_dataset(name, ds, Path(cfg["data_root"]), check_paths)
    return cfg


def _check_dataset(name: str, ds: dict[str, Any], data_root: Path, check_paths: bool) -> None:
    where = f"datasets.{name}"
    source = ds["source"]
    if source == "imagefolder" and not ds.get("path"):
        raise ConfigError(
            f"{where}.path: required for source 'imagefolder' (a folder of class folders)"
        )
    for key, only in (("path", "imagefolder"), ("test_images", "mnist5k")):
        if ds.get(key) and source != only:
            raise ConfigError(f"{where}.{key}: only used by source '{only}', not '{source}'")
    if check_paths:
        for key in ("path", "test_images"):
            if ds.get(key) and not Path(os.path.expanduser(ds[key])).exists():
                raise ConfigError(f"{where}.{key}: path does not exist: {ds[key]}")
        if ds.get("root") and not ds["download"] and not Path(ds["root"]).exists():
            raise ConfigError(
                f"{where}.root: path does not exist: {ds['root']} "
                "(download is false, so the files must already be there)"
            )
    channels = ds["channels"]
    for stat in ("mean", "std"):
        values = ds["normalize"][stat]
        if len(values) not in (1, channels):
            raise ConfigError(
                f"{where}.normalize.{stat}: {len(values)} values for {channels} channel(s); "
                "give one value or one per channel"
            )
    _check_split(where, ds)
    known = KNOWN_CLASSES[source]
    way = ds["episodes"]["way"]
    if known is not None:
        classes = known * (4 if ds["rotations"] else 1)
        if ds["split"]["protocol"] == "examples" and way > classes:
            raise ConfigError(
                f"{where}.episodes.way: {way} classes per episode, but source '{source}' "
                f"has only {classes}"
            )


def _check_split(where: str, ds: dict[str, Any]) -> None:
    split = ds["split"]
    protocol = split["protocol"]
    if protocol == "classes":
        if "train" not in split:
            raise ConfigError(
                f"{where}.split.train: required for protocol 'classes' (a class count)"
            )
        for key in ("train", "val"):
            value = split.get(key, 0)
            if value != int(value):
                raise ConfigError(
                    f"{where}.split.{key}: protocol 'classes' counts classes; got {value}, "
                    "expected a whole number"
                )
        if split.get("test_origin"):
            raise ConfigError(f"{where}.split.test_origin: only used by protocol 'examples'")
        known = KNOWN_CLASSES[ds["source"]]
        wanted = int(split["train"]) + int(split.get("val", 0))
        if known is not None and wanted >= known:
            raise ConfigError(
                f"{where}.split.train: {wanted} train+val classes leave no test classes; "
                f"source '{ds['source']}' has {known}"
            )
    else:
        if split.get("keep_groups"):
            raise ConfigError(f"{where}.split.keep_groups: only used by protocol 'classes'")
        train = split.setdefault("train", 0.6)
        val = split.setdefault("val", 0.2)
        for key, value in (("train", train), ("val", val)):
            if not 0 <= value < 1:
                raise ConfigError(
                    f"{where}.split.{key}: protocol 'examples' takes a fraction in [0, 1); "
                    f"got {value}"
                )
        if not split.get("test_origin") and train + val >= 1:
            raise ConfigError(
                f"{where}.split: train + val = {train + val:g} leaves no test examples; "
                "make the fractions sum to less than 1"
            )


def load_config(path: str | os.PathLike[str], *, check_paths: bool = True) -> dict[str, Any]:
    """Read a YAML config file and validate it (see validate_config)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path) as handle:
        try:
            raw = yaml.safe_load(handle) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return validate_config(raw, check_paths=check_paths)


DATA_KEYS = (
    "source",
    "root",
    "download",
    "sets",
    "path",
    "levels",
    "test_images",
    "checksums",
    "image_size",
    "channels",
    "invert",
    "rotations",
    "normalize",
)


def data_section(ds: Mapping[str, Any]) -> dict[str, Any]:
    """The keys that decide a dataset's prepared artifact (and nothing that comes later).

    Rules pass this as a param, so editing episodes or training settings does not
    re-prepare the data, while editing any of these does.
    """
    return {key: copy.deepcopy(ds[key]) for key in DATA_KEYS}
