"""Tiny models for the export, import and CLI tests (also a FILE.py:FACTORY target)."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 5)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(image)))
        return self.head(h.mean(dim=(2, 3)))


class TwoInTwoOut(nn.Module):
    """A float and an int64 input; a float and an int64 output."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 2)

    def forward(
        self, features: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(tokens).mean(dim=1) + features
        return self.proj(h), tokens.argmax(dim=1)


class DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.linear(x)
        return {"logits": logits, "probs": torch.softmax(logits, dim=-1)}


class BranchOnData(nn.Module):
    """Data-dependent Python control flow: a trace keeps only the branch the example took."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.mean() > 100):
            return x * 2
        return x - 1


class TiedWeights(nn.Module):
    """Two modules sharing one weight tensor (safetensors stores it once)."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Linear(4, 4, bias=False)
        self.decode = nn.Linear(4, 4, bias=False)
        self.decode.weight = self.encode.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(torch.tanh(self.encode(x)))


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return MLP()


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return CNN()


def branchy() -> nn.Module:
    return BranchOnData()


def not_a_module() -> str:
    return "a string"


NOT_CALLABLE = 42
