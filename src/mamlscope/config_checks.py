"""Config checks that a JSON schema cannot express: finiteness, and keys read together;
and the typing of `snakemake --config` overrides, which arrive as text.

A schema's ``minimum``/``maximum`` compare numbers, and every comparison with NaN is
false, so ``lr: .nan`` or ``std: [.inf]`` would pass it and surface hours later as a
chance-level result. :func:`check_finite` walks the whole config first; the others compare
keys with each other (a split against the episodes it must give, the extremes figure
against the probe) so that ``snakemake -n`` fails on them instead of a job.

``snakemake --config 'maml={meta_steps: 50}'`` parses a nested value with YAML's base
loader, which keeps every scalar as a string: :func:`coerce_strings` gives such a string
the type the schema expects there, so an override means what it says, and leaves any
string it cannot type for the schema to name.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from typing import Any

import jsonschema
import numpy as np
import yaml

from mamlscope.data.facts import known_classes, known_sizes
from mamlscope.data.pools import POOLS, example_pool_sizes
from mamlscope.errors import ConfigError

#: Rows of the fixed val and test episode tables together, at most: the split job builds
#: them in memory at about 100 bytes a row (pandas, the role as text), so 20 million rows
#: are about 2 GB. 600 test episodes of 5 x (1 + 15) images are 48,000 rows.
MAX_EPISODE_ROWS = 20_000_000


def _path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def check_finite(value: Any, path: str = "") -> None:
    """Fail on the first NaN or infinity anywhere in ``value`` (mappings and lists walked,
    in order), naming its key path, e.g. ``datasets.d.normalize.std[0]``."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ConfigError(f"{where or '(top level)'}: must be a finite number, got {item}")
        if isinstance(item, Mapping):
            children = [(_path(where, str(k)), v) for k, v in item.items()]
        elif isinstance(item, list | tuple):
            children = [(_path(where, i), v) for i, v in enumerate(item)]
        else:
            continue
        stack.extend(reversed(children))  # popped in the config's own order


# JSON-schema type names -> a test of a parsed YAML value. Stricter than the schema's own
# checker in one place on purpose: 50.0 is a JSON-schema "integer", but `range(50.0)` fails.
_TYPE_TESTS = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "string": lambda v: isinstance(v, str),
}


def typed_string(text: str, expected: str | Iterable[str]) -> tuple[bool, Any]:
    """``(True, value)`` when ``text`` read as YAML is of one of the ``expected`` JSON-schema
    types, else ``(False, text)``.

    A number in exponent form without a dot (``1e-3``) is a string to PyYAML (YAML 1.1) but
    a number in YAML 1.2 and to every user: it is read with ``float``/``int`` as well.
    """
    wanted = [expected] if isinstance(expected, str) else list(expected)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return False, text
    if isinstance(value, str) and {"number", "integer"} & set(wanted):
        for convert in (int, float):
            try:
                value = convert(text.strip())
                break
            except ValueError:
                continue
    if any(_TYPE_TESTS[name](value) for name in wanted if name in _TYPE_TESTS):
        return True, value
    return False, text


def _type_errors(errors: Iterable[jsonschema.ValidationError]) -> Iterable[Any]:
    """Every ``type`` error on a string, its sub-errors (anyOf/oneOf) included."""
    for error in errors:
        if error.validator == "type" and isinstance(error.instance, str):
            yield error
        yield from _type_errors(error.context or ())


def coerce_strings(cfg: dict[str, Any], validator: jsonschema.protocols.Validator) -> None:
    """Give each string of ``cfg`` that the schema wants of another type that type, in place.

    The schema decides where: each ``type`` error on a string (through ``$ref``, per-arch
    ``options`` rules, list items) is retried with :func:`typed_string`. ``validator`` may
    fill in defaults, so it runs on a copy; a string that does not parse to the wanted type
    stays, and the schema check then names it.
    """
    for _ in range(8):  # a typed value cannot uncover new strings, but be sure
        changed = False
        for error in _type_errors(validator.iter_errors(copy.deepcopy(cfg))):
            ok, value = typed_string(error.instance, error.validator_value)
            *parents, last = error.absolute_path
            holder: Any = cfg
            try:
                for key in parents:
                    holder = holder[key]
                found = holder[last]
            except (KeyError, IndexError, TypeError):
                continue  # a default the validator filled in, not the user's value
            if ok and found == error.instance:
                holder[last] = value
                changed = True
        if not changed:
            return


def check_features(features: Mapping[str, Any]) -> None:
    """The extremes figure shows ``extremes`` probe images per row, so the probe must hold
    that many (else the figure job fails after every model is trained)."""
    extremes, probe = features["extremes"], features["probe_images"]
    if extremes > probe:
        raise ConfigError(
            f"features.extremes: {extremes} most and least activating images per neuron, but "
            f"features.probe_images is only {probe}; lower features.extremes or raise "
            "features.probe_images"
        )


def check_episode_table(where: str, ds: Mapping[str, Any]) -> None:
    """The fixed episodes fit in memory: see :data:`MAX_EPISODE_ROWS`."""
    ep = ds["episodes"]
    per = ep["way"] * (ep["shot"] + ep["query"])
    rows = (ep["test_episodes"] + ep["val_episodes"]) * per
    if rows > MAX_EPISODE_ROWS:
        raise ConfigError(
            f"{where}.episodes: (test_episodes + val_episodes) x way x (shot + query) = "
            f"({ep['test_episodes']} + {ep['val_episodes']}) x {per} = {rows:,} episode rows, "
            f"more than the {MAX_EPISODE_ROWS:,} the split job holds in memory (about 2 GB); "
            f"lower {where}.episodes.test_episodes or the episode size"
        )


def check_split(where: str, ds: Mapping[str, Any]) -> None:
    """The split's keys for its protocol, and counts that leave a test pool."""
    split = ds["split"]  # validated: the schema filled the protocol's defaults
    if split["protocol"] == "classes":
        if "train" not in split:
            raise ConfigError(
                f"{where}.split.train: required for protocol 'classes' (a class count)"
            )
        for key in ("train", "val"):
            if split[key] != int(split[key]):
                raise ConfigError(
                    f"{where}.split.{key}: protocol 'classes' counts classes; got "
                    f"{split[key]}, expected a whole number"
                )
        if split["test_origin"]:
            raise ConfigError(f"{where}.split.test_origin: only used by protocol 'examples'")
        known = known_classes(ds["source"])
        wanted = int(split["train"]) + int(split["val"])
        if known is not None and wanted >= known:
            raise ConfigError(
                f"{where}.split.train: {wanted} train+val classes leave no test classes; "
                f"source '{ds['source']}' has {known}"
            )
        return
    if split["keep_groups"]:
        raise ConfigError(f"{where}.split.keep_groups: only used by protocol 'examples'")
    train, val = split["train"], split["val"]
    for key, value in (("train", train), ("val", val)):
        if not 0 <= value < 1:
            raise ConfigError(
                f"{where}.split.{key}: protocol 'examples' takes a fraction in [0, 1); got {value}"
            )
    if not split["test_origin"] and train + val >= 1:
        raise ConfigError(
            f"{where}.split: train + val = {train + val:g} leaves no test examples; "
            "make the fractions sum to less than 1"
        )


def check_episodes_fit(where: str, ds: Mapping[str, Any]) -> None:
    """``way`` and ``shot + query`` against the pools the split job will make.

    Uses the class and example counts known from the config and the source (its
    `SourceEntry`); where one is unknown (imagefolder, Omniglot's class count, a
    test_origin without known counts) its check is left to the source's own check or the
    split job, which checks the real pools.
    """
    split, source = ds["split"], ds["source"]
    way, shot, query = (ds["episodes"][k] for k in ("way", "shot", "query"))
    rot = 4 if ds["rotations"] else 1
    known = known_classes(source)
    sizes = known_sizes(ds)
    fix_way = f"lower {where}.episodes.way or give the pool more classes"
    fix_need = f"lower {where}.episodes.shot or {where}.episodes.query"
    need = f"{where}.episodes.shot + {where}.episodes.query: {shot} + {query} = {shot + query}"
    if split["protocol"] == "classes":
        if known is not None:
            test = known - split["train"] - split["val"]
            for pool, n in zip(POOLS, (split["train"], split["val"], test), strict=True):
                if n and way > n * rot:  # an empty val pool has no episodes
                    raise ConfigError(
                        f"{where}.episodes.way: {way} classes per episode, but pool '{pool}' "
                        f"will have only {int(n * rot)} classes ({int(n)} base classes"
                        f"{' x 4 rotations' if rot > 1 else ''}); {fix_way} "
                        f"({where}.split.train, {where}.split.val)"
                    )
        total = np.sum(list(sizes.values()), axis=0) if sizes else None
        if total is not None and shot + query > total.min():
            raise ConfigError(
                f"{need} examples per class are needed, but source '{source}' has only "
                f"{total.min()} in its smallest class; {fix_need}"
            )
        return
    origin = split["test_origin"]
    others = [n for o, n in (sizes or {}).items() if o != origin]
    if not sizes or not others or (origin and origin not in sizes):
        return  # unknown counts, or the split job reports the origins there are
    test = sizes[origin] if origin else None
    table = example_pool_sizes(np.sum(others, axis=0), split["train"], split["val"], test)
    for k, pool in enumerate(POOLS):
        counts = table[:, k][table[:, k] > 0]
        if pool == "val" and counts.size == 0:
            continue  # no val pool: training runs without validation
        if known is not None and way > counts.size * rot:
            raise ConfigError(
                f"{where}.episodes.way: {way} classes per episode, but pool '{pool}' will "
                f"have only {counts.size * rot} classes; {fix_way}"
            )
        if counts.size and shot + query > counts.min():
            why = (
                f"origin '{origin}' (split.test_origin) gives"
                if origin and pool == "test"
                else f"split.train = {split['train']:g}, split.val = {split['val']:g} give"
            )
            raise ConfigError(
                f"{need} examples per class are needed, but {why} some class only "
                f"{counts.min()} in pool '{pool}'; {fix_need}, or change {where}.split"
            )
