"""The accuracy-based analyses (mamlscope.analyses): each against the computation it must
equal (the evaluation, head-only adaptation, a by-hand reference), and the table contract."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from job_tools import train_job

import mamlscope.analyses.run as analyses_run
from mamlscope.analyses import (
    COLUMNS,
    AnalysisSettings,
    analyze_model,
    centroid_accuracy,
    freeze_settings,
    gather_episodes,
    run_analyses,
)
from mamlscope.config import evaluate_section, validate_config
from mamlscope.errors import ConfigError
from mamlscope.evaluate import EvalSettings, evaluate_maml, run_evaluation
from mamlscope.finetune import evaluate_finetune, features_of
from mamlscope.maml import select_parameters
from mamlscope.methods import method
from mamlscope.models import batch_statistics, build_model, statistics_from_first

WAY, SHOT, QUERY = 3, 2, 4
MODES = ("transductive", "support")


def make_batches(episodes: int = 6, batch: int = 4, seed: int = 0):
    """Random episodes of 1x6x6 images in batches of ``batch`` (the last one shorter)."""
    gen = torch.Generator().manual_seed(seed)
    support_x = torch.randn(episodes, WAY * SHOT, 1, 6, 6, generator=gen)
    query_x = torch.randn(episodes, WAY * QUERY, 1, 6, 6, generator=gen)
    support_y = torch.arange(WAY).repeat_interleave(SHOT).repeat(episodes, 1)
    query_y = torch.arange(WAY).repeat_interleave(QUERY).repeat(episodes, 1)
    return [
        tuple(t[i : i + batch] for t in (support_x, support_y, query_x, query_y))
        for i in range(0, episodes, batch)
    ]


def meta_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model("fc", (1, 6, 6), WAY, hidden=[8, 8])
    with torch.no_grad():  # BatchNorm away from identity, so the modes differ
        for name, p in model.named_parameters():
            if name.startswith("bn"):
                p.add_(0.3 * torch.randn_like(p))
    return model


def inner_settings(name: str, steps: int = 3) -> EvalSettings:
    return EvalSettings(
        method=name, way=WAY, shot=SHOT, query=QUERY, batch=4, inner_lr=0.5, inner_steps=steps
    )


def analysed(name: str, model, batches, steps=(0, 1), train_steps: int = 1) -> pd.DataFrame:
    return analyze_model(
        model,
        method(name),
        lambda: iter(batches),
        inner_settings(name),
        AnalysisSettings(steps=tuple(steps)),
        episode_ids=list(range(sum(len(b[0]) for b in batches))),
        seed=0,
        train_inner_steps=train_steps,
    )


def rows(frame: pd.DataFrame, analysis: str, setting: str, mode: str) -> np.ndarray:
    picked = frame[
        (frame["analysis"] == analysis)
        & (frame["setting"] == setting)
        & (frame["batchnorm"] == mode)
    ]
    return picked.sort_values("episode")["accuracy"].to_numpy()


# --- layer freezing and the steps sweep ----------------------------------------------------


def test_freeze_settings_are_every_child_with_parameters_then_the_body():
    model = meta_model()
    settings = dict(freeze_settings(model))
    assert list(settings) == ["from fc1", "from bn1", "from fc2", "from bn2", "from head", "body"]
    every = {n for n, _ in model.named_parameters()}
    assert settings["from fc1"] == every
    assert settings["from fc2"] == every - {"fc1.weight", "fc1.bias", "bn1.weight", "bn1.bias"}
    assert settings["from head"] == {"head.weight", "head.bias"}
    assert settings["body"] == every - settings["from head"]


@pytest.mark.parametrize("mode", MODES)
def test_freeze_from_the_first_layer_is_the_evaluation_and_from_head_is_head_only(mode):
    model, batches = meta_model(), make_batches()
    frame = analysed("maml", model, batches)
    kwargs = dict(inner_lr=0.5, inner_steps=3, batchnorm=mode)
    full = evaluate_maml(model, batches, adapted=method("maml").adapted(model), **kwargs)
    head = evaluate_maml(model, batches, adapted=select_parameters(model, "head"), **kwargs)
    assert not np.array_equal(full, head)  # the two settings really differ here
    assert np.array_equal(rows(frame, "freeze", "from fc1", mode), full)
    assert np.array_equal(rows(frame, "freeze", "from head", mode), head)
    body = evaluate_maml(model, batches, adapted=select_parameters(model, "body"), **kwargs)
    assert np.array_equal(rows(frame, "freeze", "body", mode), body)


@pytest.mark.parametrize("steps", [0, 3])
def test_freeze_from_head_is_sgd_on_the_head_alone(steps: int):
    """Against a per-episode loop: the body's features (each batch's own statistics) are
    fixed and only the head takes `steps` SGD steps from its meta-learned weights."""
    model, batches = meta_model(), make_batches(episodes=4)
    frame = analyze_model(
        model,
        method("maml"),
        lambda: iter(batches),
        inner_settings("maml", steps),
        AnalysisSettings(batchnorm=("transductive",), steps=(0,)),
        episode_ids=[0, 1, 2, 3],
        seed=0,
        train_inner_steps=1,
    )
    hits = rows(frame, "freeze", "from head", "transductive")
    support_x, support_y, query_x, query_y = batches[0]
    for e in range(len(support_x)):
        with torch.no_grad(), batch_statistics():
            fs, fq = features_of(model, support_x[e]), features_of(model, query_x[e])
        w = model.head.weight.detach().clone().requires_grad_()
        b = model.head.bias.detach().clone().requires_grad_()
        for _ in range(steps):
            loss = F.cross_entropy(fs @ w.T + b, support_y[e])
            gw, gb = torch.autograd.grad(loss, (w, b))
            w = (w - 0.5 * gw).detach().requires_grad_()
            b = (b - 0.5 * gb).detach().requires_grad_()
        expected = ((fq @ w.T + b).argmax(-1) == query_y[e]).float().mean().item()
        assert hits[e] == pytest.approx(expected)


@pytest.mark.parametrize("name", ["maml", "anil", "boil"])
def test_steps_at_the_test_steps_is_the_evaluation_and_zero_steps_no_adaptation(name):
    model, batches = meta_model(), make_batches()
    frame = analysed(name, model, batches, steps=(0, 2))
    assert set(frame.loc[frame["analysis"] == "steps", "setting"]) == {"0", "1", "2", "3"}
    for mode in MODES:
        own = evaluate_maml(
            model,
            batches,
            inner_lr=0.5,
            inner_steps=3,
            batchnorm=mode,
            adapted=method(name).adapted(model),
        )
        assert np.array_equal(rows(frame, "steps", "3", mode), own)
        unadapted = []
        for support_x, _, query_x, query_y in batches:
            for e in range(len(support_x)):
                with torch.no_grad(), batch_statistics():
                    if mode == "transductive":
                        logits = model(query_x[e])
                    else:
                        with statistics_from_first(len(support_x[e])):
                            both = model(torch.cat([support_x[e], query_x[e]]))
                        logits = both[len(support_x[e]) :]
                unadapted.append((logits.argmax(-1) == query_y[e]).float().mean().item())
        assert rows(frame, "steps", "0", mode) == pytest.approx(unadapted)


def test_a_computation_both_analyses_ask_for_runs_once(monkeypatch):
    calls = []
    real = analyses_run.adaptation_accuracy

    def counted(model, batches, **kwargs):
        calls.append((frozenset(kwargs["adapted"] or ()), kwargs["inner_steps"]))
        return real(model, batches, **kwargs)

    monkeypatch.setattr(analyses_run, "adaptation_accuracy", counted)
    analysed("anil", meta_model(), make_batches(), steps=(0, 1, 3))
    # Per mode: 6 freeze settings at 3 steps, and steps 0 and 1 (3 is "from head").
    assert len(calls) == 2 * (6 + 2) and len(set(calls)) == 6 + 2


# --- nearest centroid and the fresh head ----------------------------------------------------


def baseline_model() -> torch.nn.Module:
    """A standard-training network whose running statistics are not the identity."""
    torch.manual_seed(1)
    model = build_model("fc", (1, 6, 6), 10, hidden=[8, 5], running_stats=True)
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(32, 1, 6, 6) * 2 + 0.5)
        for name, p in model.named_parameters():
            if name.startswith("bn"):
                p.add_(0.3 * torch.randn_like(p))
    return model


def numpy_features(model, x: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
    """The fc net's penultimate features by hand: BatchNorm with the statistics of the
    rows ``reference`` selects (None: the running statistics)."""
    h = x.reshape(len(x), -1).astype(np.float64)
    layers = dict(model.named_children())
    for i in (1, 2):
        fc, bn = layers[f"fc{i}"], layers[f"bn{i}"]
        h = h @ fc.weight.detach().double().numpy().T + fc.bias.detach().double().numpy()
        if reference is None:
            mean = bn.running_mean.double().numpy()
            var = bn.running_var.double().numpy()
        else:
            mean, var = h[reference].mean(0), h[reference].var(0)  # biased, as BatchNorm
        h = (h - mean) / np.sqrt(var + bn.eps)
        h = h * bn.weight.detach().double().numpy() + bn.bias.detach().double().numpy()
        h = np.maximum(h, 0)
    return h


@pytest.mark.parametrize("mode", ["transductive", "support", "running"])
def test_nearest_centroid_matches_a_by_hand_reference(mode):
    model, batches = baseline_model(), make_batches(episodes=5, batch=3, seed=2)
    got = centroid_accuracy(model, batches, batchnorm=mode, way=WAY)
    expected = []
    for support_x, support_y, query_x, query_y in batches:
        for e in range(len(support_x)):
            s, q = support_x[e].numpy(), query_x[e].numpy()
            n = len(s)
            if mode == "transductive":
                fs = numpy_features(model, s, np.arange(n))
                fq = numpy_features(model, q, np.arange(len(q)))
            else:
                both = np.concatenate([s, q])
                f = numpy_features(model, both, None if mode == "running" else np.arange(n))
                fs, fq = f[:n], f[n:]
            labels = support_y[e].numpy()
            prototypes = np.stack([fs[labels == c].mean(0) for c in range(WAY)])
            distance = ((fq[:, None, :] - prototypes[None]) ** 2).sum(-1)
            expected.append(float((distance.argmin(1) == query_y[e].numpy()).mean()))
    assert got == pytest.approx(expected, abs=1e-12)
    assert 0 < np.mean(got) < 1


def test_the_modes_normalise_differently_and_running_exists_only_with_running_statistics():
    batches = make_batches(episodes=8, batch=8, seed=3)
    model = baseline_model()
    by_mode = {
        m: centroid_accuracy(model, batches, batchnorm=m, way=WAY) for m in (*MODES, "running")
    }
    assert len({tuple(v) for v in by_mode.values()}) > 1
    with pytest.raises(ConfigError, match="running statistics"):
        centroid_accuracy(meta_model(), batches, batchnorm="running", way=WAY)
    frame = analysed("maml", meta_model(), batches)
    assert set(frame.loc[frame["analysis"] == "centroid", "batchnorm"]) == set(MODES)


def test_fine_tuning_under_running_statistics_is_the_baseline_evaluation():
    model, batches = baseline_model(), make_batches(episodes=6, batch=4, seed=4)
    ids = [3, 7, 8, 20, 21, 40]  # seeds the fresh heads, as evaluation numbers them
    settings = EvalSettings(
        method="baseline", way=WAY, shot=SHOT, query=QUERY, batch=4,
        finetune_steps=15, finetune_lr=0.05,
    )  # fmt: skip
    frame = analyze_model(
        model,
        method("baseline"),
        lambda: iter(batches),
        settings,
        AnalysisSettings(),
        episode_ids=ids,
        seed=5,
    )
    assert set(frame["analysis"]) == {"centroid", "finetune"}
    evaluation = evaluate_finetune(
        model, batches, way=WAY, steps=15, lr=0.05, seed=5, episode_ids=ids
    )
    got = frame[(frame["analysis"] == "finetune") & (frame["batchnorm"] == "running")]
    assert got["episode"].tolist() == ids
    assert np.array_equal(got["accuracy"].to_numpy(), evaluation)
    other = frame[(frame["analysis"] == "finetune") & (frame["batchnorm"] == "transductive")]
    assert not np.array_equal(other["accuracy"].to_numpy(), evaluation)


# --- the config and the table ---------------------------------------------------------------


def raw_config(analyses: dict) -> dict:
    dataset = {
        "source": "digits",
        "split": {"protocol": "examples"},
        "episodes": {"way": 5, "shot": 1},
    }
    return {"datasets": {"d": dataset}, "analyses": analyses}


def test_the_analyses_config_has_defaults():
    cfg = validate_config(raw_config({}), check_paths=False)
    assert cfg["analyses"] == {
        "batchnorm": ["transductive", "support"],
        "steps": [0, 1, 2, 5, 10],
        "episodes": None,
        "snapshot_episodes": 100,
    }
    assert AnalysisSettings.from_config(cfg["analyses"]) == AnalysisSettings()
    chosen = validate_config(raw_config({"snapshot_episodes": None}), check_paths=False)
    assert AnalysisSettings.from_config(chosen["analyses"]).snapshot_episodes is None


@pytest.mark.parametrize(
    ("analyses", "message"),
    [
        ({"batchnorm": ["running"]}, r"analyses\.batchnorm\.0: 'running' is not one of"),
        ({"batchnorm": ["transductive", "transductive"]}, r"analyses\.batchnorm: .*non-unique"),
        ({"steps": [-1]}, r"analyses\.steps\.0: -1 is less than the minimum of 0"),
        ({"episodes": 0}, r"analyses\.episodes: 0 is less than the minimum of 1"),
        (
            {"snapshot_episodes": 0},
            r"analyses\.snapshot_episodes: 0 is less than the minimum of 1",
        ),
    ],
)
def test_a_bad_analyses_config_is_refused_naming_the_key(analyses, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(raw_config(analyses), check_paths=False)


def test_analysis_settings_refuse_what_the_schema_refuses():
    with pytest.raises(ConfigError, match="analyses.batchnorm"):
        AnalysisSettings(batchnorm=("running",))
    with pytest.raises(ConfigError, match="analyses.episodes"):
        AnalysisSettings(episodes=0)
    with pytest.raises(ConfigError, match="analyses.snapshot_episodes"):
        AnalysisSettings(snapshot_episodes=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="integers >= 0"):
        AnalysisSettings(steps=(1, -2))


def assert_contract(table: pd.DataFrame) -> None:
    assert {c: str(t) for c, t in table.dtypes.items()} == COLUMNS
    assert table["accuracy"].between(0, 1).all()


def test_the_job_and_the_gathered_table_keep_the_columns(tiny_digits, tmp_path):
    cfg = copy.deepcopy(tiny_digits["cfg"])
    cfg["maml"]["meta_steps"] = 2
    files = {k: tiny_digits[k] for k in ("images", "index", "meta")}
    tables, evaluations = [], []
    for name in ("baseline", "maml"):
        folder = tmp_path / name
        train_job(tiny_digits, cfg, name, folder, seed=3)
        settings = EvalSettings.from_config(evaluate_section(cfg, name), name)
        run_evaluation(
            checkpoint=folder / "model.pt",
            **files,
            pools=tiny_digits["pools"],
            test_episodes=tiny_digits["test_episodes"],
            settings=settings,
            dataset="digits8",
            device="cpu",
            summary_json=folder / "evaluation.json",
            summary_parquet=folder / "evaluation.parquet",
        )
        table = run_analyses(
            checkpoint=folder / "model.pt",
            **files,
            test_episodes=tiny_digits["test_episodes"],
            settings=settings,
            analyses={"batchnorm": ["support"], "steps": [0], "episodes": 7},
            protocol="classes",
            dataset="digits8",
            device="cpu",
            out=folder / "analyses.parquet",
        )
        assert_contract(pd.read_parquet(folder / "analyses.parquet"))
        assert set(table["classes"]) == {"unseen"} and set(table["seed"]) == {3}
        assert (
            sorted(table["episode"].unique())
            == sorted(pd.read_parquet(tiny_digits["test_episodes"])["episode"].unique())[:7]
        )
        tables.append(folder / "analyses.parquet")
        evaluations.append(folder / "evaluation.json")
    out = tmp_path / "episodes.parquet"
    gathered = gather_episodes(
        analyses=tables,
        evaluations=evaluations,
        test_episodes={"digits8": tiny_digits["test_episodes"]},
        protocols={"digits8": "classes"},
        out=out,
    )
    table = pd.read_parquet(out)
    assert_contract(table)
    pd.testing.assert_frame_equal(table, gathered)
    assert set(table["classes"]) == {"unseen"} and set(table["snapshot"]) == {1.0}
    own = table[table["analysis"] == "evaluation"]
    assert set(own["setting"]) == {"own"}
    assert own.groupby("method")["batchnorm"].first().to_dict() == {
        "baseline": "running",
        "maml": "transductive",
    }
    for name, path in zip(("baseline", "maml"), evaluations, strict=True):
        per_episode = json.loads(path.read_text())["per_episode"]
        mine = own[own["method"] == name].sort_values("episode")["accuracy"].to_numpy()
        assert mine == pytest.approx(per_episode)  # exact fractions of the float32 values
        queries = 5 * tiny_digits["cfg"]["episodes"]["query"]  # 5-way
        assert np.array_equal(mine, np.rint(mine * queries) / queries)  # k / queries
    # Sorted: run by run, then analysis, setting, mode and episode.
    order = ["dataset", "method", "seed", "snapshot", "analysis", "setting", "batchnorm", "episode"]
    assert table.equals(table.sort_values(order).reset_index(drop=True))


def test_settings_of_another_method_are_refused():
    with pytest.raises(ConfigError, match="settings are for 'maml'.*'anil'"):
        analyze_model(
            meta_model(),
            method("anil"),
            lambda: iter(make_batches()),
            inner_settings("maml"),
            AnalysisSettings(),
            episode_ids=list(range(6)),
            seed=0,
            train_inner_steps=1,
        )
