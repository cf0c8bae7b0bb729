"""A small CNN for scikit-learn's 8x8 handwritten digits, and a quick deterministic trainer."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

#: Pixel values in ``load_digits().data`` run from 0 to 16.
PIXEL_MAX = 16.0
CLASSES = 10


class DigitsCNN(nn.Module):
    """``(N, 64)`` float32 pixels in 0..16 -> ``(N, 10)`` class probabilities.

    The input is what ``sklearn.datasets.load_digits().data`` gives; the model scales it and
    reshapes it to ``(N, 1, 8, 8)`` itself, and ends in a softmax. Train on :meth:`logits`.
    """

    def __init__(self, channels: int = 32, hidden: int = 128, dropout: float = 0.2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels * 2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * 2 * 16, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, CLASSES),
        )

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        images = (pixels / PIXEL_MAX).reshape(-1, 1, 8, 8)
        return self.classifier(self.features(images))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(pixels), dim=1)


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed split of ``load_digits()``: ``x_train, x_test, y_train, y_test``.

    A quarter of the 1,797 images, stratified, are held out; ``x`` is float32 ``(N, 64)``
    in 0..16 and ``y`` int64. The same split every call, whatever the training seed.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y
    )
    return x_train, x_test, y_train, y_test


@torch.no_grad()
def accuracy(model: DigitsCNN, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    predicted = model.logits(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((predicted == y).mean())


def train_digits(
    seed: int = 0, epochs: int = 12, batch_size: int = 32, lr: float = 2e-3
) -> tuple[DigitsCNN, float]:
    """Train a :class:`DigitsCNN` on the fixed split; return it (in eval mode) and its test
    accuracy. Deterministic for a given seed on a given machine; a few seconds on two cores.
    """
    x_train, x_test, y_train, y_test = digits_split()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = DigitsCNN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-len(x_train) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr * 2, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    inputs, targets = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(inputs), generator=generator).split(batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model.logits(inputs[batch]), targets[batch])
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval(), accuracy(model, x_test, y_test)
