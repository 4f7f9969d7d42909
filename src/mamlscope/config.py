"""Loading and validating an experiment config before any job starts.

The JSON schema (`config/schema.yaml`, shipped in the package as `schema.yaml`) says what
every key means and fills in defaults; the checks here and in `config_checks` add what a
schema cannot see: NaN and infinity, paths on disk, class counts known in advance, keys
read together.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sized
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from mamlscope.config_checks import (
    check_episode_table,
    check_episodes_fit,
    check_features,
    check_finite,
    check_split,
    coerce_strings,
)
from mamlscope.data.readers import check_source_config
from mamlscope.errors import ConfigError

# Sections a dataset may override over the top-level ones.
OVERRIDABLE = ("model", "baseline", "maml")


def load_schema() -> dict[str, Any]:
    """The config schema shipped with the package, with the names that registries decide
    filled in: `methods` from the method table, `model.arch` from the networks, a
    dataset's `source` from the sources."""
    text = resources.files("mamlscope").joinpath("schema.yaml").read_text()
    schema = yaml.safe_load(text)
    from mamlscope.data.readers import source_names
    from mamlscope.methods import method_names
    from mamlscope.models import model_names, options_rules

    schema["properties"]["methods"]["items"]["enum"] = list(method_names())
    schema["$defs"]["model"]["properties"]["arch"]["enum"] = list(model_names())
    schema["$defs"]["model"]["allOf"] = options_rules()  # each arch's own options
    schema["$defs"]["dataset"]["properties"]["source"]["enum"] = list(source_names())
    return schema


def _with_defaults(validator_class: Any) -> Any:
    """A validator that also writes each property's `default` into the instance.

    This is the recipe from the jsonschema FAQ: defaults are set before the properties
    are validated, so a filled-in default is itself checked.
    """
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: Any, instance: Any, schema: Any) -> Any:
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


def _message(error: jsonschema.ValidationError) -> str:
    """jsonschema's message, without repeating a long list that is too long."""
    if error.validator == "maxItems" and isinstance(error.instance, list):
        return f"{len(error.instance)} items, more than the maximum of {error.validator_value}"
    return error.message


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _has(value: Any, path: list[Any]) -> bool:
    """Whether ``path`` (keys and indices) leads somewhere in ``value``."""
    for key in path:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            return False
    return True


def _schema_errors(validator: Any, cfg: dict[str, Any], own: dict[str, Any]) -> list[str]:
    """One line per schema error, in key order. An error in a dataset's section at a key
    the dataset inherited from the top level (``own``: the dataset sections as written) is
    the top-level key's error again: it is left out, so a bad ``maml.meta_steps`` is one
    line, not one per dataset."""
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    seen = {tuple(e.absolute_path) for e in errors}
    lines = []
    for e in errors:
        path = list(e.absolute_path)
        if (
            len(path) > 3
            and path[0] == "datasets"
            and path[2] in OVERRIDABLE
            and tuple(path[2:]) in seen
            and not _has(own.get(path[1], {}), path[2:])
        ):
            continue
        lines.append(f"  {_key(path)}: {_message(e)}")
    return lines


def validate_config(config: Mapping[str, Any], *, check_paths: bool = True) -> dict[str, Any]:
    """Return a validated copy of ``config`` with defaults filled in.

    Strings where the schema wants another type (``snakemake --config`` hands nested
    values over as text) are typed first (:func:`config_checks.coerce_strings`). Raises
    ConfigError naming the first offending key (all schema errors are listed).
    """
    cfg = copy.deepcopy(dict(config))
    check_finite(cfg)  # before the schema: its minimum/maximum let NaN through
    # Merge the top-level sections into each dataset's before defaults are filled, so a
    # dataset inherits what the top level sets and overrides only what it names.
    datasets = cfg.get("datasets")
    own: dict[str, Any] = {}
    if isinstance(datasets, dict):
        own = copy.deepcopy(datasets)
        for ds in datasets.values():
            if not isinstance(ds, dict):
                continue
            for section in OVERRIDABLE:
                top, mine = cfg.get(section), ds.get(section)
                if isinstance(top, Mapping) and (mine is None or isinstance(mine, Mapping)):
                    ds[section] = _deep_merge(top, mine or {})
    validator = _Validator(load_schema())
    coerce_strings(cfg, validator)
    # Again, as an override may have been `.nan`: the top-level sections first, so a bad
    # `maml.inner_lr` is named there rather than in the dataset that inherited it.
    check_finite({key: value for key, value in cfg.items() if key != "datasets"})
    check_finite(cfg)
    lines = _schema_errors(validator, cfg, own)
    if lines:
        raise ConfigError("invalid config:\n" + "\n".join(lines))
    for name, ds in cfg["datasets"].items():
        _check_dataset(name, ds, Path(cfg["data_root"]), check_paths)
        _check_network(name, ds, cfg["features"]["neurons"])
    check_features(cfg["features"])
    return cfg


def _check_network(name: str, ds: Mapping[str, Any], neurons: list[dict[str, Any]] | None) -> None:
    """The dataset's network builds and runs on its images (before any job: a network too
    deep for the image size fails here, not in training), and each `features.neurons`
    entry names one of its recorded layers and a unit in it (the widths come from a forward
    of two blank images)."""
    from mamlscope.models import build_model, layer_widths, resolve_options  # needs torch

    model_cfg, size = ds["model"], ds["image_size"]
    in_shape = (ds["channels"], size, size)
    try:
        options = resolve_options(
            model_cfg["arch"], model_cfg.get("options"), f"datasets.{name}.model.options"
        )
        model = build_model(
            model_cfg["arch"],
            in_shape,
            ds["episodes"]["way"],
            hidden=model_cfg["hidden"],
            filters=model_cfg["filters"],
            options=options,
        )
        widths = layer_widths(model, in_shape)
    except ConfigError as exc:
        raise ConfigError(f"datasets.{name}.model: {exc}") from exc
    except RuntimeError as exc:  # torch's own shape errors in the forward
        raise ConfigError(
            f"datasets.{name}.model: the {model_cfg['arch']} network does not run on "
            f"{ds['channels']}x{size}x{size} images ({exc}); change image_size or the model"
        ) from exc
    for i, neuron in enumerate(neurons or []):
        layer, unit = neuron["layer"], neuron["unit"]
        if layer not in widths:
            raise ConfigError(
                f"features.neurons.{i}.layer: {layer!r} is not a layer of dataset {name}'s "
                f"{model_cfg['arch']} network; its layers are {list(widths)}"
            )
        if widths[layer] is not None and unit >= widths[layer]:
            raise ConfigError(
                f"features.neurons.{i}.unit: {unit} is out of range for layer {layer!r} of "
                f"dataset {name}'s network, which has {widths[layer]} units"
            )


def check_normalize(stats: Mapping[str, Sized], channels: int, where: str = "") -> None:
    """Fail unless each statistic has one value (for every channel) or one per channel.

    The one implementation of this rule: the config check, `prepare_dataset` and the
    tensor normalisation all call it, so they cannot disagree.
    """
    for key, values in stats.items():
        if len(values) not in (1, channels):
            raise ConfigError(
                f"{where}normalize.{key}: {len(values)} values for {channels} channel(s); "
                "give one value or one per channel"
            )


def _check_dataset(name: str, ds: dict[str, Any], data_root: Path, check_paths: bool) -> None:
    where = f"datasets.{name}"
    check_source_config(ds, where, check_paths)  # the source's own keys and checks
    check_normalize(ds["normalize"], ds["channels"], f"{where}.")
    check_split(where, ds)
    check_episodes_fit(where, ds)
    check_episode_table(where, ds)


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


def canonical(value: Any) -> Any:
    """A deep copy of ``value`` with every mapping's keys in sorted order.

    Snakemake compares a job's params by their ``repr``, and a dict's repr follows its key
    order: rules pass their config sections through this, so a config whose keys are only
    reordered (say rewritten by ``yaml.safe_dump``, which sorts them) reruns nothing.
    """
    if isinstance(value, Mapping):
        return {key: canonical(value[key]) for key in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        return [canonical(item) for item in value]
    return copy.deepcopy(value)


def data_section(ds: Mapping[str, Any]) -> dict[str, Any]:
    """The keys that decide a dataset's prepared artifact (and nothing that comes later).

    Rules pass this as a param, so editing episodes or training settings does not
    re-prepare the data, while editing any of these does.
    """
    return canonical({key: ds[key] for key in DATA_KEYS})


# What each later stage reads. Rules pass these sections as params, so that Snakemake
# reruns a job only for edits of keys that job reads (see docs/architecture.md). Which
# keys training and evaluation read is each method's own declaration
# (`Method.train_keys`, `Method.evaluate_keys`, in mamlscope.methods).


def split_section(ds: Mapping[str, Any]) -> dict[str, Any]:
    """The keys that decide a seed's pools and fixed episodes: `split` and `episodes`.

    Every episode key counts: way, shot and query shape the episodes, and the counts
    decide how many are drawn. Editing `episodes.test_episodes` therefore rewrites the
    split, and everything downstream of it reruns.
    """
    return canonical({"split": ds["split"], "episodes": ds["episodes"]})


def _cut(ds: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """Copies of the dotted ``keys`` of ``ds``, nested as in the config, sections in the
    order they first appear; a key without a dot is a whole section. A ConfigError names
    every key that is missing."""
    sections: dict[str, tuple[str, ...] | None] = {}
    for key in keys:
        section, _, name = key.partition(".")
        sections[section] = (*(sections.get(section) or ()), name) if name else None
    missing = [
        f"{section}.{name}" if name else section
        for section, names in sections.items()
        for name in (names or ("",))
        if not isinstance(ds.get(section), Mapping) or (name and name not in ds[section])
    ]
    if missing:
        raise ConfigError(f"missing from the config: {', '.join(missing)}")
    return {
        section: copy.deepcopy(
            dict(ds[section]) if names is None else {n: ds[section][n] for n in names}
        )
        for section, names in sections.items()
    }


def train_section(ds: Mapping[str, Any], method: str) -> dict[str, Any]:
    """The keys that decide a training run's weights and metrics, nested as in the config:
    the method's ``train_keys`` (:mod:`mamlscope.methods`).

    Standard training: `model` and the `baseline` optimiser keys (not `finetune_*`, which
    only evaluation reads). Meta-training: `model`, the `maml` training keys including the
    validation keys, the episode shape that tasks are sampled with, and whatever the method
    adds (`fd_epsilon` for a finite-difference meta-gradient).
    """
    from mamlscope.methods import method as lookup

    return canonical(_cut(ds, lookup(method).train_keys))


def evaluate_section(ds: Mapping[str, Any], method: str) -> dict[str, Any]:
    """The keys that decide a run's evaluation on the fixed test episodes, nested as in
    the config (what `evaluate.EvalSettings.from_config` reads): the method's
    ``evaluate_keys``.

    Every method: the episode shape and `maml.eval_batch` (episodes per batch: for a
    fine-tuned head it changes no number, since heads are seeded per episode, but the job
    batches by it). Fine-tuning: `finetune_*`. The inner loop: `inner_lr`,
    `test_inner_steps` and `eval_batchnorm`.
    """
    from mamlscope.methods import method as lookup

    return canonical(_cut(ds, lookup(method).evaluate_keys))
