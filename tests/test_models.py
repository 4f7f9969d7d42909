"""Networks: layer names, shapes, deterministic init, and the BatchNorm policy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mamlscope.errors import ConfigError
from mamlscope.models import (
    BatchNorm1d,
    BatchNorm2d,
    Network,
    batch_statistics,
    build_model,
    head_input,
    layer_names,
    layer_outputs,
    model_names,
    resolve_options,
)


def test_fc_layer_names_default_widths() -> None:
    model = build_model("fc", (1, 28, 28), 5)
    expected = [f"{kind}{i}" for i in range(1, 5) for kind in ("fc", "bn", "relu")] + ["head"]
    assert model.layer_names() == expected == layer_names(model)
    assert [model.get_submodule(f"fc{i}").out_features for i in range(1, 5)] == [256, 128, 64, 64]
    assert model.head.in_features == 64 and model.head.out_features == 5


def test_conv4_layer_names_and_finn_shape() -> None:
    model = build_model("conv4", (1, 28, 28), 5)
    blocks = [f"{kind}{i}" for i in range(1, 5) for kind in ("conv", "bn", "relu")]
    assert model.layer_names() == blocks + ["pool", "head"]
    conv = model.conv1
    assert (conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == (
        64,
        (3, 3),
        (2, 2),
        (1, 1),
    )
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 5)


def test_conv4_maxpool_layer_names_and_shape() -> None:
    model = build_model("conv4-maxpool", (3, 84, 84), 5)
    blocks = [f"{kind}{i}" for i in range(1, 5) for kind in ("conv", "bn", "relu", "pool")]
    assert model.layer_names() == blocks + ["flatten", "head"]
    assert model.conv1.out_channels == 32 and model.conv1.stride == (1, 1)
    assert model.head.in_features == 32 * 5 * 5
    assert model(torch.randn(2, 3, 84, 84)).shape == (2, 5)


def test_running_children_in_order_equals_forward() -> None:
    """Feature extraction walks named_children(): that must equal forward (fc1 flattens)."""
    for arch, shape in (("fc", (1, 8, 8)), ("conv4", (1, 14, 14)), ("conv4-maxpool", (1, 16, 16))):
        model = build_model(arch, shape, 4, hidden=[16] if arch == "fc" else None, filters=4)
        x = torch.randn(6, *shape)
        h = x
        for _, layer in model.named_children():
            h = layer(h)
        torch.testing.assert_close(h, model(x), rtol=0, atol=0)


def test_forward_hook_on_every_named_layer() -> None:
    model = build_model("conv4", (1, 14, 14), 3, filters=4)
    seen: dict[str, tuple[int, ...]] = {}
    handles = [
        model.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: seen.__setitem__(name, tuple(out.shape))
        )
        for name in model.layer_names()
    ]
    try:
        model(torch.randn(2, 1, 14, 14))
    finally:
        for handle in handles:
            handle.remove()
    assert list(seen) == model.layer_names()
    assert seen["conv1"] == (2, 4, 7, 7) and seen["pool"] == (2, 4) and seen["head"] == (2, 3)


def test_unknown_arch_lists_the_registered_ones() -> None:
    with pytest.raises(ConfigError, match=r"arch must be one of \[.*\], got 'resnet'") as info:
        build_model("resnet", (1, 28, 28), 5)
    assert all(repr(name) in str(info.value) for name in model_names())
    assert {"fc", "conv4", "conv4-maxpool", "resnet12"} <= set(model_names())
    assert "entry point in group 'mamlscope.models'" in str(info.value)


@pytest.mark.parametrize(
    ("arch", "options", "match"),
    [
        ("fc", {"width": 3}, r"model.options: arch 'fc' takes no options, got \['width'\]"),
        ("resnet12", {"channels": [4, 4, 8]}, r"model.options.channels: \[4, 4, 8\] is too short"),
        ("resnet12", {"channels": [4, 0, 8, 8]}, r"model.options.channels.1: 0 is less than"),
        ("resnet12", {"chanels": [4]}, r"(?s)takes \[.channels.\].*.chanels. was unexpected"),
    ],
)
def test_bad_options_name_the_key(arch: str, options: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_model(arch, (1, 28, 28), 5, options=options)


def test_option_defaults_are_filled_in() -> None:
    assert resolve_options("resnet12", None)["channels"] == [64, 160, 320, 640]
    assert resolve_options("resnet12", {"channels": [1, 2, 3, 4]}) == {"channels": [1, 2, 3, 4]}
    assert resolve_options("fc", {}) == {}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"hidden": []}, "hidden"),
        ({"hidden": [8, 0]}, "hidden width"),
        ({"in_shape": (1, 28)}, "in_shape"),
    ],
)
def test_bad_arguments_name_the_key(kwargs: dict, match: str) -> None:
    args = {"arch": "fc", "in_shape": (1, 28, 28), "num_classes": 5} | kwargs
    with pytest.raises(ConfigError, match=match):
        build_model(args.pop("arch"), args.pop("in_shape"), args.pop("num_classes"), **args)


def test_conv4_maxpool_rejects_images_too_small() -> None:
    with pytest.raises(ConfigError, match="16x16"):
        build_model("conv4-maxpool", (1, 8, 8), 5)


def test_keys_of_other_archs_are_ignored() -> None:
    """Configs carry hidden and filters together; each arch reads only its own."""
    torch.manual_seed(0)
    a = build_model("conv4", (1, 14, 14), 3, filters=4, hidden=[256, 128])
    torch.manual_seed(0)
    b = build_model("conv4", (1, 14, 14), 3, filters=4)
    assert a.layer_names() == b.layer_names()
    assert build_model("fc", (1, 4, 4), 3, hidden=[8], filters=64).fc1.out_features == 8


def test_init_is_deterministic_given_seed() -> None:
    def weights(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return build_model("conv4", (1, 14, 14), 5, filters=8).state_dict()

    a, b, c = weights(3), weights(3), weights(4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])


@pytest.mark.parametrize(
    ("ours", "theirs", "shape"),
    [(BatchNorm1d, nn.BatchNorm1d, (16, 5)), (BatchNorm2d, nn.BatchNorm2d, (8, 5, 4, 3))],
)
def test_batchnorm_matches_torch_in_train_and_eval(ours, theirs, shape) -> None:
    torch.manual_seed(0)
    mine, ref = ours(5, track_running_stats=True), theirs(5)
    with torch.no_grad():
        for m in (mine, ref):
            m.weight.copy_(torch.linspace(0.5, 2.0, 5))
            m.bias.copy_(torch.linspace(-1.0, 1.0, 5))
    for _ in range(3):  # training: batch statistics, running stats updated
        x = torch.randn(*shape) * 3 + 1
        torch.testing.assert_close(mine(x), ref(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mine.running_mean, ref.running_mean)
    torch.testing.assert_close(mine.running_var, ref.running_var)
    mine.eval(), ref.eval()
    x = torch.randn(*shape)
    torch.testing.assert_close(mine(x), ref(x), rtol=1e-5, atol=1e-5)


def test_batchnorm_without_running_stats_uses_batch_stats_in_eval() -> None:
    bn = BatchNorm2d(3).eval()
    assert bn.running_mean is None
    out = bn(torch.randn(10, 3, 4, 4) * 5 + 2)
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        out.var(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3, rtol=0
    )


@pytest.mark.parametrize("training", [True, False])
def test_batch_statistics_context_forces_batch_stats_and_writes_no_buffer(training: bool) -> None:
    model: Network = build_model("conv4", (1, 14, 14), 3, filters=4, running_stats=True)
    model.train(training)
    before = {k: v.clone() for k, v in model.named_buffers()}
    x = torch.randn(6, 1, 14, 14) * 4 + 3
    with batch_statistics():
        out = model(x)
    assert all(torch.equal(before[k], v) for k, v in model.named_buffers())
    no_stats = build_model("conv4", (1, 14, 14), 3, filters=4, running_stats=False)
    no_stats.load_state_dict(model.state_dict(), strict=False)
    torch.testing.assert_close(out, no_stats.eval()(x))


def test_held_gates_replay_the_recorded_relu_masks_and_max_pool_choices() -> None:
    """Recorded at x, held at x + d: the net is x's linearisation through its gates; the
    record is replayed exactly once per forward, and a mismatch is an error."""
    from mamlscope.models import hold_gates, record_gates

    torch.manual_seed(0)
    model = build_model("conv4-maxpool", (1, 16, 16), 3, filters=4)
    x = torch.randn(5, 1, 16, 16)
    with batch_statistics():
        out = model(x)
        gates = record_gates(lambda: model(x))
        assert len(gates) == 8  # 4 ReLU masks, 4 pool index maps
        assert gates[0].dtype == x.dtype and gates[1].dtype == torch.int64
        with hold_gates(gates):
            torch.testing.assert_close(model(x), out, rtol=0, atol=0)  # same point: same net
        far = x + 3 * torch.randn_like(x)
        with hold_gates(gates):
            held = model(far)
        assert not torch.allclose(held, model(far))  # the free net switched gates
        relu = model.relu1
        h = torch.randn(4, 6)
        mask = (torch.randn(4, 6) > 0).to(h.dtype)
        with hold_gates((mask,)):
            torch.testing.assert_close(relu(h), h * mask, rtol=0, atol=0)
        with pytest.raises(RuntimeError, match="more gated layers"), hold_gates(gates[:1]):
            model(x)
        with pytest.raises(RuntimeError, match="8 patterns recorded, 1 used"):
            with hold_gates(gates):
                relu(torch.randn_like(gates[0]))
    assert isinstance(relu, nn.ReLU) and isinstance(model.pool1, nn.MaxPool2d)


def test_resnet12_is_the_literature_network() -> None:
    """Lee et al. (2019): 3 x [3x3 conv, BN, LeakyReLU 0.1] with a 1x1 conv + BN shortcut,
    the sum, LeakyReLU, 2x2 max-pool; widths 64-160-320-640, mean over space, head."""
    model = build_model("resnet12", (3, 84, 84), 5)
    assert layer_names(model) == ["block1", "block2", "block3", "block4", "pool", "head"]
    widths, channels = [64, 160, 320, 640], 3
    for i, width in enumerate(widths, start=1):
        block = model.get_submodule(f"block{i}")
        convs = [block.get_submodule(f"conv{j}") for j in (1, 2, 3)]
        assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
            (channels, width, (3, 3)),
            (width, width, (3, 3)),
            (width, width, (3, 3)),
        ]
        assert all(c.bias is None and c.padding == (1, 1) for c in convs)
        assert block.shortcut.conv.kernel_size == (1, 1) and block.shortcut.conv.bias is None
        assert all(isinstance(block.get_submodule(f"bn{j}"), BatchNorm2d) for j in (1, 2, 3))
        assert isinstance(block.shortcut.bn, BatchNorm2d)
        relus = [m for m in block.modules() if isinstance(m, nn.LeakyReLU)]
        assert len(relus) == 3 and all(r.negative_slope == 0.1 for r in relus)
        assert isinstance(block.pool, nn.MaxPool2d) and block.pool.kernel_size == 2
        channels = width
    assert model.head.in_features == 640
    assert sum(p.numel() for p in model.parameters()) == 12_427_525  # ResNet-12's 12.4M
    small = build_model("resnet12", (3, 84, 84), 5, options={"channels": [2, 3, 4, 5]})
    seen = layer_outputs(small, layer_names(small), lambda: small(torch.randn(2, 3, 84, 84)))
    assert [tuple(v.shape) for v in seen.values()] == [
        (2, 2, 42, 42), (2, 3, 21, 21), (2, 4, 10, 10), (2, 5, 5, 5), (2, 5), (2, 5)
    ]  # fmt: skip


def test_resnet12_residual_block_computes_the_sum_then_the_gate() -> None:
    torch.manual_seed(0)
    block = build_model("resnet12", (2, 16, 16), 3, options={"channels": [4, 4, 4, 4]}).block1
    x = torch.randn(5, 2, 16, 16)
    leaky = nn.LeakyReLU(0.1)
    with batch_statistics():
        h = leaky(block.bn1(block.conv1(x)))
        h = leaky(block.bn2(block.conv2(h)))
        h = block.bn3(block.conv3(h)) + block.shortcut.bn(block.shortcut.conv(x))
        torch.testing.assert_close(block(x), F.max_pool2d(leaky(h), 2), rtol=0, atol=0)


def test_resnet12_running_stats_and_small_images() -> None:
    stats = build_model("resnet12", (1, 16, 16), 3, running_stats=True)
    norms = [m for m in stats.modules() if isinstance(m, BatchNorm2d)]
    assert len(norms) == 16 and all(m.running_mean is not None for m in norms)
    with pytest.raises(ConfigError, match=r"at least 16x16.*got 8x8"):
        build_model("resnet12", (1, 8, 8), 5)


def test_hooks_are_removed_when_the_forward_fails_or_stops_early() -> None:
    model = build_model("conv4", (1, 14, 14), 3, filters=4)
    calls: list[str] = []
    model.head.register_forward_hook(lambda *_: calls.append("head ran"))
    early = layer_outputs(model, ["bn1"], lambda: model(torch.randn(4, 1, 14, 14)))
    assert early["bn1"].shape == (4, 4, 7, 7) and calls == []  # stopped before head
    features = head_input(model, torch.randn(4, 1, 14, 14))
    assert features.shape == (4, 4) and calls == []  # stopped at head's input
    with pytest.raises(RuntimeError, match="to have 1 channels"):
        layer_outputs(model, ["bn1", "head"], lambda: model(torch.randn(4, 2, 14, 14)))
    with pytest.raises(RuntimeError, match=r"\['head'\] of Network did not run"):
        layer_outputs(model, ["head"], lambda: model.conv1(torch.randn(4, 1, 14, 14)))
    hooked = [name for name, m in model.named_modules() if m._forward_hooks]
    assert hooked == ["head"] and len(model.head._forward_hooks) == 1  # the test's own
    assert not any(m._forward_pre_hooks for m in model.modules())


# The runtime every job of these models runs under (mamlscope.runtime, mamlscope.logs).


def test_set_threads_and_allocator_tuning_leave_torch_unimported() -> None:
    """A job that never computes with torch must not pay for importing it."""
    import subprocess
    import sys

    code = (
        "import os, sys\n"
        "from mamlscope.logs import logged\n"
        "from mamlscope.runtime import set_threads, tune_allocator\n"
        "set_threads(3)\n"
        "with logged(None):\n"
        "    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "print(os.environ['OMP_NUM_THREADS'], tune_allocator())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    threads, tuned = out.stdout.split()
    assert threads == "3"
    assert tuned == str(sys.platform.startswith("linux") and _glibc())


def _glibc() -> bool:
    import platform

    return platform.libc_ver()[0] == "glibc"


def test_set_threads_sets_torch_threads_and_a_log_ends_with_the_process_usage(tmp_path) -> None:
    from mamlscope.logs import USAGE_PREFIX, logged
    from mamlscope.runtime import set_threads

    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    log = tmp_path / "job.log"
    with logged(log):
        print("working")
    last = log.read_text().splitlines()[-1]
    assert USAGE_PREFIX in last
    fields = dict(item.split("=") for item in last.split(USAGE_PREFIX)[1].split())
    assert {"user_s", "sys_s", "minor_faults", "major_faults", "max_rss_mib"} <= fields.keys()
    assert float(fields["user_s"]) > 0
