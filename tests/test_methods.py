"""The method table: its declarations, its registry, and every registered method run
through training and evaluation (parametrized over the registry, so a new method is
tested without editing this file)."""

from __future__ import annotations

import copy
import dataclasses
import re
import sys
import types
from importlib.metadata import EntryPoint

import numpy as np
import pandas as pd
import pytest
import torch
from job_tools import train_job

from mamlscope.config import evaluate_section, load_schema, train_section, validate_config
from mamlscope.errors import ConfigError
from mamlscope.evaluate import EvalSettings, run_evaluation
from mamlscope.maml import adapt, meta_step, select_parameters
from mamlscope.methods import Method, method, method_names, ordered, registry
from mamlscope.methods.base import (
    FINETUNE_EVAL_KEYS,
    INNER_LOOP_EVAL_KEYS,
    LEGACY_DEFAULTS,
    META_TRAIN_KEYS,
    STANDARD_TRAIN_KEYS,
)
from mamlscope.models import build_model, model_names

NAMES = method_names()
# A standard-training declaration but for what its fresh head adapts.
STANDARD = dict(
    training="standard",
    order=None,
    adapts="all",
    evaluation="finetune",
    train_keys=STANDARD_TRAIN_KEYS,
    evaluate_keys=FINETUNE_EVAL_KEYS,
    batchnorm="running",
)
META = [n for n in NAMES if method(n).is_meta]


pytestmark = pytest.mark.usefixtures("one_thread")


# --- the declarations ----------------------------------------------------------------------


def test_the_registry_holds_the_built_in_methods_in_display_order():
    assert {"baseline", "maml", "fomaml", "maml-fd"} <= set(NAMES)
    positions = [method(n).position for n in NAMES]
    assert positions == sorted(positions)
    assert NAMES[:4] == ("baseline", "maml", "fomaml", "maml-fd")
    assert all(registry()[n].name == n for n in NAMES)
    assert ordered(["unknown", "maml-fd", "baseline"]) == ["baseline", "maml-fd", "unknown"]


def test_an_unknown_method_is_a_config_error_listing_the_registered_ones():
    with pytest.raises(ConfigError, match="unknown method 'reptile'") as info:
        method("reptile")
    for name in NAMES:
        assert repr(name) in str(info.value)


def test_the_schema_accepts_exactly_the_registered_methods_and_networks():
    schema = load_schema()
    assert schema["properties"]["methods"]["items"]["enum"] == list(NAMES)
    assert schema["$defs"]["model"]["properties"]["arch"]["enum"] == list(model_names())
    raw = {
        "methods": list(NAMES),
        "datasets": {
            "d": {
                "source": "digits",
                "split": {"protocol": "examples"},
                "episodes": {"way": 5, "shot": 1},
            }
        },
    }
    assert validate_config(raw, check_paths=False)["methods"] == list(NAMES)
    with pytest.raises(ConfigError, match=r"methods\.0"):
        validate_config({**raw, "methods": ["reptile"]}, check_paths=False)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"name": "a b"}, "method name"),
        ({"training": "online"}, "training 'online'"),
        ({"order": "third"}, "order 'third'"),
        ({"adapts": "neck"}, "adapts 'neck'"),
        ({"evaluation": "finetune"}, "evaluation='inner-loop'"),
        ({"batchnorm": "running"}, "batchnorm=None"),
        ({"order": "finite-difference"}, "maml.fd_epsilon"),
        ({"train_keys": ("model",)}, "META_TRAIN_KEYS"),
        ({"evaluate_keys": ()}, "INNER_LOOP_EVAL_KEYS"),
        ({"training": "standard"}, "order=None"),
        (STANDARD, "adapts='head'"),
    ],
)
def test_a_declaration_that_cannot_run_is_refused_naming_the_fix(change, words):
    base = dict(name="mine", label="mine", position=99, description="a test method")
    with pytest.raises(ConfigError, match=re.escape(words)):
        Method(**{**base, **change})


@pytest.mark.parametrize("name", NAMES)
def test_each_method_declares_a_consistent_row(name):
    m = method(name)
    assert m.label and m.description
    assert m.section in ("baseline", "maml")
    assert m.batchnorm == ("running" if not m.is_meta else None)
    assert m.adapts_body == (m.evaluation == "inner-loop" and m.adapts in ("all", "body"))
    # Exactly one reference model for CKA among the built-in table.
    assert sum(method(n).cka_reference for n in NAMES) == 1


def test_sections_follow_each_methods_declared_keys(tiny_digits):
    ds = tiny_digits["cfg"]
    for name in NAMES:
        m = method(name)
        for keys, section in ((m.train_keys, train_section), (m.evaluate_keys, evaluate_section)):
            cut = section(ds, name)
            dotted = {f"{s}.{k}" for s, sub in cut.items() if s != "model" for k in sub}
            assert dotted == {k for k in keys if "." in k}
            assert ("model" in cut) == ("model" in keys)
    assert "fd_epsilon" in train_section(ds, "maml-fd")["maml"]
    assert "fd_epsilon" not in train_section(ds, "maml")["maml"]


def test_what_the_cli_requires_of_a_checkpoint_is_what_evaluation_reads_less_legacy_keys():
    from mamlscope.cli import _settings_keys

    for name in NAMES:
        m = method(name)
        assert set(_settings_keys(m)) == set(m.evaluate_keys) - set(LEGACY_DEFAULTS)


# --- what each inner loop adapts -------------------------------------------------------------


def episode(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    support_x = torch.randn(6, 1, 6, 6, generator=gen)
    support_y = torch.arange(3).repeat_interleave(2)
    return support_x, support_y


@pytest.mark.parametrize("name", META)
def test_the_inner_loop_changes_exactly_the_parameters_the_method_adapts(name):
    m = method(name)
    torch.manual_seed(0)
    model = build_model("fc", (1, 6, 6), 3, hidden=[8, 8])
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = {k: b.detach() for k, b in model.named_buffers()}
    adapted = m.adapted(model)
    expected = set(params) if adapted is None else set(adapted)
    if m.adapts != "all":
        assert expected == set(select_parameters(model, m.adapts))
    support_x, support_y = episode()
    after = adapt(
        model, params, buffers, support_x, support_y, inner_lr=0.5, inner_steps=2, adapted=adapted
    )
    changed = {k for k in params if not torch.equal(after[k], params[k])}
    assert changed == expected, name


def test_anil_adapts_only_the_head_and_boil_leaves_the_head_alone():
    """Raghu et al. 2020 (ANIL) and Oh et al. 2021 (BOIL), through the same inner loop."""
    if not {"anil", "boil"} <= set(NAMES):
        pytest.skip("anil and boil are not registered")
    torch.manual_seed(0)
    model = build_model("fc", (1, 6, 6), 3, hidden=[8, 8])
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = {k: b.detach() for k, b in model.named_buffers()}
    support_x, support_y = episode(1)
    head = {k for k in params if k.startswith("head.")}
    for name, unchanged in (("anil", set(params) - head), ("boil", head)):
        after = adapt(
            model,
            params,
            buffers,
            support_x,
            support_y,
            inner_lr=0.5,
            inner_steps=3,
            adapted=method(name).adapted(model),
        )
        assert all(torch.equal(after[k], params[k]) for k in unchanged), name
        assert all(not torch.equal(after[k], params[k]) for k in set(params) - unchanged), name


# --- every registered method, trained and evaluated ----------------------------------------


@pytest.fixture(scope="module")
def runs(tiny_digits, tmp_path_factory) -> dict[str, dict]:
    """Every registered method trained for a few steps and evaluated on the test episodes."""
    cfg = copy.deepcopy(tiny_digits["cfg"])
    cfg["maml"]["meta_steps"] = 20
    out = {}
    for name in NAMES:
        folder = tmp_path_factory.mktemp(f"method-{name}")
        result = train_job(tiny_digits, cfg, name, folder)
        row = run_evaluation(
            checkpoint=folder / "model.pt",
            images=tiny_digits["images"],
            index=tiny_digits["index"],
            meta=tiny_digits["meta"],
            pools=tiny_digits["pools"],
            test_episodes=tiny_digits["test_episodes"],
            settings=EvalSettings.from_config(cfg, name),
            dataset="digits8",
            device="cpu",
            summary_json=folder / "evaluation.json",
            summary_parquet=folder / "evaluation.parquet",
        )
        out[name] = {"folder": folder, "result": result, "row": row, "cfg": cfg}
    return out


@pytest.mark.parametrize("name", NAMES)
def test_every_method_trains_and_evaluates_as_it_declares(runs, name):
    m, run = method(name), runs[name]
    result, row, cfg = run["result"], run["row"], run["cfg"]
    train_rows = result.metrics[result.metrics["phase"] == "train"]
    if m.is_meta:
        assert len(train_rows) == cfg["maml"]["meta_steps"]
        assert result.spec.num_classes == cfg["episodes"]["way"]
        assert not result.spec.running_stats
    else:
        assert result.spec.running_stats
    assert row["method"] == name
    assert row["batchnorm"] == (m.batchnorm or cfg["maml"]["eval_batchnorm"])
    assert np.isfinite(row["test_accuracy"]) == m.plain_accuracy
    chance = 1 / cfg["episodes"]["way"]
    assert row["mean"] - row["ci95"] > chance, row  # every method learns something


@pytest.mark.parametrize("name", META)
def test_the_outer_loop_updates_every_parameter_whatever_the_inner_loop_adapts(name):
    """The meta-gradient reaches every parameter (ANIL's body, BOIL's head included)."""
    m = method(name)
    torch.manual_seed(0)
    model = build_model("fc", (1, 6, 6), 3, hidden=[8, 8])
    gen = torch.Generator().manual_seed(2)
    support_x, query_x = torch.randn(2, 6, 1, 6, 6, generator=gen), torch.randn(2, 9, 1, 6, 6)
    support_y = torch.arange(3).repeat_interleave(2).repeat(2, 1)
    query_y = torch.arange(3).repeat_interleave(3).repeat(2, 1)
    result = meta_step(
        model,
        support_x,
        support_y,
        query_x,
        query_y,
        inner_lr=0.5,
        inner_steps=1,
        order=m.order,
        adapted=m.adapted(model),
    )
    assert set(result.grads) == {k for k, _ in model.named_parameters()}
    assert all(g.abs().sum() > 0 for g in result.grads.values()), name


# --- a plug-in method -----------------------------------------------------------------------


PLUGIN = Method(
    name="fomaml-head",
    label="FOMAML (head)",
    position=1000,
    description="a user's method: first-order meta-training, the inner loop on the head only",
    order="first",
    adapts="head",
    train_keys=META_TRAIN_KEYS,
    evaluate_keys=INNER_LOOP_EVAL_KEYS,
)


@pytest.fixture
def plugin(monkeypatch):
    """PLUGIN registered through an entry point of group `mamlscope.methods`."""
    import mamlscope.methods
    import mamlscope.plugins

    module = types.ModuleType("mamlscope_test_plugin")
    module.METHOD = PLUGIN  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mamlscope_test_plugin", module)
    point = EntryPoint("fomaml-head", "mamlscope_test_plugin:METHOD", "mamlscope.methods")
    real = mamlscope.plugins.entry_points

    def entry_points(group: str):
        return [point] if group == "mamlscope.methods" else real(group=group)

    monkeypatch.setattr(mamlscope.plugins, "entry_points", entry_points)
    mamlscope.methods.clear()
    yield PLUGIN
    mamlscope.methods.clear()


def test_a_plug_in_method_runs_through_training_evaluation_and_the_feature_studies(
    plugin, tiny_digits, tmp_path
):
    from mamlscope.analyses import run_analyses
    from mamlscope.features.cka_study import cka_table
    from mamlscope.features.extract import extract_activations, write_probe

    assert method_names()[-1] == plugin.name
    raw = {
        "methods": ["baseline", plugin.name],
        "datasets": {
            "d": {
                "source": "digits",
                "split": {"protocol": "examples"},
                "episodes": {"way": 5, "shot": 1},
            }
        },
    }
    assert validate_config(raw, check_paths=False)["methods"] == ["baseline", plugin.name]
    cfg = copy.deepcopy(tiny_digits["cfg"])
    cfg["maml"]["meta_steps"] = 10
    files = {k: tiny_digits[k] for k in ("images", "index", "meta", "pools")}
    probe = tmp_path / "probe.parquet"
    write_probe(tiny_digits["index"], tiny_digits["pools"], images=50, seed=0, out=probe)
    activations = {}
    for name in ("baseline", plugin.name):
        folder = tmp_path / name
        train_job(tiny_digits, cfg, name, folder)
        settings = EvalSettings.from_config(evaluate_section(cfg, name), name)
        row = run_evaluation(
            checkpoint=folder / "model.pt",
            **files,
            test_episodes=tiny_digits["test_episodes"],
            settings=settings,
            dataset="digits8",
            device="cpu",
            summary_json=folder / "evaluation.json",
            summary_parquet=folder / "evaluation.parquet",
        )
        assert row["method"] == name
        extract_activations(
            checkpoint=folder / "model.pt",
            images=tiny_digits["images"],
            index=tiny_digits["index"],
            meta=tiny_digits["meta"],
            probe=probe,
            test_episodes=tiny_digits["test_episodes"],
            settings=settings,
            adapt_episodes=2,
            device="cpu",
            out=folder / "activations.parquet",
        )
        activations[name] = folder / "activations.parquet"
        table = run_analyses(
            checkpoint=folder / "model.pt",
            images=tiny_digits["images"],
            index=tiny_digits["index"],
            meta=tiny_digits["meta"],
            test_episodes=tiny_digits["test_episodes"],
            settings=settings,
            analyses={"batchnorm": ["support"], "steps": [0], "episodes": 5},
            protocol="examples",
            dataset="digits8",
            device="cpu",
            out=folder / "analyses.parquet",
        )
        assert set(table["method"]) == {name} and table["episode"].nunique() == 5
        if method(name).evaluation == "finetune":  # a fresh head: nothing to freeze
            assert set(table["analysis"]) == {"centroid", "finetune"}
        else:  # its own inner loop adapts only the head already: freezing the body is it
            own = table[
                (table["analysis"] == "steps") & (table["setting"] == str(settings.inner_steps))
            ]
            head = table[(table["analysis"] == "freeze") & (table["setting"] == "from head")]
            assert own["accuracy"].tolist() == head["accuracy"].tolist()
    cka = cka_table(activations, dataset="digits8", seed=0)
    meta = cka[cka["stage"] == "meta"]
    assert set(zip(meta["model_a"], meta["model_b"], strict=True)) == {("baseline", plugin.name)}
    adaptation = cka[(cka["stage"] == "adaptation") & (cka["model_a"] == plugin.name)]
    body = adaptation[adaptation["layer_a"] != "head"]
    assert np.allclose(body["cka"], 1.0)  # its inner loop leaves the body as it is
    assert len(adaptation) == len(body) + 1


def test_a_plug_in_named_like_a_built_in_method_is_refused(monkeypatch, plugin):
    import mamlscope.methods
    from mamlscope.plugins import PluginError

    clash = dataclasses.replace(PLUGIN, name="maml")
    monkeypatch.setattr(sys.modules["mamlscope_test_plugin"], "METHOD", clash)
    mamlscope.methods.clear()
    with pytest.raises(PluginError, match="two entries are named 'maml'"):
        method_names()


def test_the_ordering_compares_the_methods_adapting_every_parameter():
    from mamlscope.report.findings import ordering_methods

    chosen = ordering_methods(NAMES)
    assert chosen == {"second": "maml", "first": "fomaml", "finite-difference": "maml-fd"}


@pytest.mark.parametrize("name", [n for n in NAMES if method(n).evaluation == "inner-loop"])
def test_per_episode_cka_keeps_the_body_at_one_where_adaptation_leaves_it(name):
    """Per test episode, CKA before against after each method's own inner loop: 1 in every
    body layer of a method whose adaptation cannot change the body (ANIL), below 1
    somewhere in the body of one that adapts it, and below 1 at the head for all."""
    from mamlscope.features.activations import activations_frame
    from mamlscope.features.cka_study import episode_cka
    from mamlscope.features.extract import episode_activations

    torch.manual_seed(0)
    m = method(name)
    model = build_model("fc", (1, 6, 6), 3, hidden=[8, 8])
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = {k: b.detach() for k, b in model.named_buffers()}
    gen = torch.Generator().manual_seed(1)
    frames = []
    for e in range(3):
        support_x = torch.randn(6, 1, 6, 6, generator=gen)
        query_x = torch.randn(9, 1, 6, 6, generator=gen)
        support_y = torch.arange(3).repeat_interleave(2)
        labels = np.concatenate([support_y.numpy(), np.arange(3).repeat(3)])
        ids = np.arange(15) + 100 * e
        before = episode_activations(model, support_x, query_x, maml=True, batchnorm="support")
        theta = adapt(
            model, params, buffers, support_x, support_y, inner_lr=0.5, inner_steps=2,
            adapted=m.adapted(model),
        )  # fmt: skip
        after = episode_activations(
            model, support_x, query_x, maml=True, batchnorm="support", params=theta
        )
        frames.append(activations_frame(before, ids, labels, stage="meta", episode=e))
        frames.append(activations_frame(after, ids, labels, stage="adapted", episode=e))
    per = episode_cka(pd.concat(frames, ignore_index=True))
    assert len(per) == 3 * per["layer"].nunique()  # every layer, every episode
    body = per[per["layer"] != "head"]
    if m.adapts_body:
        assert body["cka"].min() < 1 - 1e-6
    else:
        assert body["cka"].to_numpy() == pytest.approx(1.0, abs=1e-12)
    assert (per.loc[per["layer"] == "head", "cka"] < 1 - 1e-6).all()
