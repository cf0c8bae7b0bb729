"""Pruning on real models: DigitsCNN trained on scikit-learn's digits, and ResNet-18."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from torchferry.export import export
from torchferry.optimize.errors import Skipped
from torchferry.optimize.prune import prune_channels, prune_unstructured
from torchferry.runtimes import load_runtime
from torchferry.zoo.digits import DigitsCNN, accuracy, digits_split, train_digits
from torchferry.zoo.resnet import resnet18


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@contextmanager
def one_thread() -> Iterator[None]:
    """For the digits model: on a model this small thread hand-offs cost more than they give,
    and on a busy machine two spinning threads made training 3-6 times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> tuple[DigitsCNN, float]:
    with one_thread():
        return train_digits(seed=0)


@pytest.fixture(scope="module")
def split() -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    x_train, x_test, y_train, y_test = digits_split()
    return torch.from_numpy(x_train), torch.from_numpy(y_train), x_test, y_test


def test_unstructured_zeros_the_fraction_and_leaves_a_plain_module(digits, split):
    model, _ = digits
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = prune_unstructured(model, 0.3)
    assert type(pruned) is DigitsCNN
    assert pruned.state_dict().keys() == model.state_dict().keys()
    for module in pruned.modules():
        assert not module._forward_pre_hooks
    for name, tensor in pruned.state_dict().items():
        assert tensor.shape == before[name].shape
        if name.endswith("weight"):
            zeros = int((tensor == 0).sum())
            assert zeros == round(0.3 * tensor.numel()), name
        else:
            assert torch.equal(tensor, before[name]), name  # biases untouched
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name  # the original is untouched

    _, _, x_test, _ = split
    light = prune_unstructured(model, 0.1)
    with torch.no_grad():
        want = model(torch.from_numpy(x_test))
        got = light(torch.from_numpy(x_test))
    assert (got.argmax(1) == want.argmax(1)).float().mean() >= 0.99
    assert (got - want).abs().max() < 0.2


def test_unstructured_limits():
    with pytest.raises(ValueError, match="amount"):
        prune_unstructured(DigitsCNN(), 1.5)
    with pytest.raises(Skipped, match="no Conv or Linear") as info:
        prune_unstructured(nn.Sequential(nn.ReLU()), 0.5)
    assert "Conv" in info.value.reason


def test_channels_digits_shrinks_every_layer_but_the_last():
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    pruned = prune_channels(model, 0.25, (torch.rand(2, 64) * 16,))
    assert type(pruned) is DigitsCNN and not pruned.training
    conv1, conv2 = pruned.features[0], pruned.features[2]
    hidden, last = pruned.classifier[1], pruned.classifier[4]
    assert conv1.weight.shape == (24, 1, 3, 3)
    assert conv2.weight.shape == (48, 24, 3, 3)
    assert hidden.weight.shape == (96, 48 * 16)  # one block of 4x4 features per channel
    assert last.weight.shape == (10, 96)
    expected = (24 * 9 + 24) + (48 * 24 * 9 + 48) + (96 * 768 + 96) + (10 * 96 + 10)
    assert (count(model), count(pruned)) == (151_306, expected) == (151_306, 85_450)
    assert model.features[0].out_channels == 32  # the original is untouched
    for batch in (1, 5):
        probabilities = pruned(torch.rand(batch, 64) * 16)
        assert probabilities.shape == (batch, 10)
        torch.testing.assert_close(probabilities.sum(1), torch.ones(batch))


def test_channels_digits_keeps_accuracy_with_a_short_finetune(digits, split):
    model, original = digits
    x_train, y_train, x_test, y_test = split

    def finetune(net: nn.Module) -> None:
        torch.manual_seed(0)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
        net.train()
        for _ in range(2):
            for batch in torch.randperm(len(x_train)).split(32):
                optimizer.zero_grad()
                F.cross_entropy(net.logits(x_train[batch]), y_train[batch]).backward()
                optimizer.step()

    with one_thread():
        pruned = prune_channels(model, 0.25, (x_train[:2],), finetune=finetune)
    assert not pruned.training  # the input's mode, whatever the callback left
    assert count(pruned) < 0.6 * count(model)
    assert accuracy(pruned, x_test, y_test) >= original - 0.03


def test_channels_digits_exports_with_parity(digits, tmp_path):
    model, _ = digits
    pruned = prune_channels(model, 0.5, (torch.rand(2, 64) * 16,))
    archive = export(pruned, torch.rand(1, 64) * 16, name="digits", store=tmp_path, format="both")
    assert archive.manifest.graphs.keys() == {"onnxruntime", "torchscript"}
    assert {r.format for r in archive.manifest.parity} == {"onnx", "torchscript"}
    assert all(r.max_abs_error < 1e-4 for r in archive.manifest.parity)
    x = (np.random.default_rng(0).random((5, 64)) * 16).astype(np.float32)
    with torch.no_grad():
        want = pruned(torch.from_numpy(x)).numpy()
    for runtime in ("onnxruntime", "torchscript"):
        engine = load_runtime(archive, runtime=runtime, threads=1)
        try:
            (got,) = engine.infer({archive.manifest.signature.inputs[0].name: x}).values()
        finally:
            engine.close()
        np.testing.assert_allclose(got, want, atol=1e-5)


def conv_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of every Conv2d in one forward: the work channel removal cuts
    (counted, not timed: speed belongs in benchmarks, not in unit tests)."""
    total = 0

    def hook(module: nn.Module, _: object, output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Conv2d)
        per_output = module.in_channels // module.groups * module.weight[0, 0].numel()
        total += output.numel() * per_output

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return total


def test_channels_resnet18_prunes_inner_convs_only_and_does_less_work(tmp_path):
    torch.manual_seed(0)
    model = resnet18()
    pruned = prune_channels(model, 0.5, (torch.randn(1, 3, 64, 64),))
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    inner = 0
    for path in blocks:
        block, new = model.get_submodule(path), pruned.get_submodule(path)
        planes = block.conv1.out_channels
        inner += count(block.conv1) + count(block.bn1) + count(block.conv2)
        assert new.conv1.weight.shape == (planes // 2, block.conv1.in_channels, 3, 3)
        assert new.bn1.running_mean.shape == (planes // 2,)
        assert new.conv2.weight.shape == (planes, planes // 2, 3, 3)  # the add sees all
        assert new.bn2.weight.shape == (planes,)
    for name, module in model.named_modules():  # every layer feeding an add is whole
        if "downsample" in name or name in ("conv1", "bn1", "fc"):
            for key, tensor in module.state_dict().items():
                assert pruned.get_submodule(name).state_dict()[key].shape == tensor.shape
    assert count(pruned) == count(model) - inner // 2
    assert count(pruned) == 6_194_856  # 53% of 11,689,512
    for batch in (1, 5):
        assert pruned(torch.randn(batch, 3, 64, 64)).shape == (batch, 1000)

    x = torch.randn(1, 3, 64, 64)
    # each inner conv pair loses half its work (conv1 half the outputs, conv2 half the inputs)
    assert conv_macs(pruned, x) < 0.65 * conv_macs(model, x)

    archive = export(pruned, torch.randn(1, 3, 64, 64), name="r18", store=tmp_path, format="both")
    assert {r.format for r in archive.manifest.parity} == {"onnx", "torchscript"}


@torch.no_grad()
def silence(layer: nn.Module, channels: slice, norm: nn.Module | None = None) -> None:
    """Make output ``channels`` of ``layer`` exactly zero (after its norm, if given)."""
    layer.weight[channels] = 0
    for module in (layer, norm):
        if module is not None and module.bias is not None:
            module.bias[channels] = 0
    if norm is not None:
        norm.weight[channels] = 0


def test_channels_removes_the_right_channels_and_features():
    """Channels that give exactly zero are the smallest by L1, so pruning removes them and
    nothing else: the output is unchanged, which checks every index (flatten blocks too)."""
    torch.manual_seed(0)
    digits = DigitsCNN().eval()
    silence(digits.features[0], slice(1, None, 4))  # 8 of 32
    silence(digits.features[2], slice(2, None, 4))  # 16 of 64, each a block of 16 features
    silence(digits.classifier[1], slice(3, None, 4))  # 32 of 128
    x = torch.rand(5, 64) * 16
    pruned = prune_channels(digits, 0.25, (x,))
    assert count(pruned) == 85_450
    torch.testing.assert_close(pruned.logits(x), digits.logits(x))

    resnet = resnet18()
    for i in range(1, 5):
        for j in range(2):
            block = resnet.get_submodule(f"layer{i}.{j}")
            silence(block.conv1, slice(j, None, 2), block.bn1)
    x = torch.randn(2, 3, 32, 32)
    pruned = prune_channels(resnet, 0.5, (x,))
    assert count(pruned) == 6_194_856
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), resnet(x))


class Mixed(nn.Module):
    """A depthwise conv, a concat, a functional ReLU, x.view(x.size(0), -1) and BatchNorm1d."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.side = nn.Conv2d(8, 4, 1)
        self.pointwise = nn.Conv2d(12, 16, 1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.hidden = nn.Linear(16 * 4, 32)
        self.norm = nn.BatchNorm1d(32)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.depthwise(self.stem(x)))
        x = self.pool(F.relu(self.pointwise(torch.cat([x, self.side(x)], dim=1))))
        return self.head(F.relu(self.norm(self.hidden(x.view(x.size(0), -1)))))


def test_channels_leaves_grouped_concat_and_output_layers_whole():
    torch.manual_seed(0)
    model = Mixed().eval()
    pruned = prune_channels(model, 0.5, (torch.randn(2, 3, 8, 8),))
    shapes = {k: tuple(v.shape) for k, v in pruned.state_dict().items() if k.endswith("weight")}
    assert shapes == {
        "stem.weight": (8, 3, 3, 3),  # feeds a depthwise conv
        "depthwise.weight": (8, 1, 3, 3),  # grouped, and feeds a concat
        "side.weight": (4, 8, 1, 1),  # feeds a concat
        "pointwise.weight": (8, 12, 1, 1),  # then ReLU, pool, x.view(x.size(0), -1)
        "hidden.weight": (16, 8 * 4),
        "norm.weight": (16,),
        "head.weight": (5, 16),  # the model's output
    }
    assert pruned.norm.running_var.shape == (16,)
    assert pruned(torch.randn(3, 3, 8, 8)).shape == (3, 5)


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent: torch.fx cannot trace it
            return self.conv(x)
        return x


def test_channels_skips_what_it_cannot_prune():
    single = nn.Sequential(nn.Conv2d(3, 3, 1))  # its output is the model's output
    with pytest.raises(Skipped, match="no layer"):
        prune_channels(single, 0.5, (torch.randn(1, 3, 4, 4),))
    with pytest.raises(Skipped, match="trace"):
        prune_channels(Branchy(), 0.5, (torch.randn(1, 3, 4, 4),))
    with pytest.raises(ValueError, match="amount"):
        prune_channels(DigitsCNN(), 1.0, (torch.zeros(1, 64),))
