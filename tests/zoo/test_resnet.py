from __future__ import annotations

import torch

from torchferry.zoo.resnet import resnet18


def test_resnet18_parameters_and_forward():
    model = resnet18()
    assert sum(p.numel() for p in model.parameters()) == 11_689_512
    assert not model.training
    with torch.no_grad():
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 1000)


def test_resnet18_layer_names_match_torchvision():
    keys = resnet18(num_classes=10).state_dict().keys()
    assert len(keys) == 122
    for key in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.num_batches_tracked",
        "layer4.1.bn2.bias",
        "fc.weight",
    ]:
        assert key in keys
    assert "layer1.0.downsample.0.weight" not in keys
    assert resnet18(num_classes=10).fc.out_features == 10
