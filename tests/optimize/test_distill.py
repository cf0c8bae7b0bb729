"""Distillation on scikit-learn's digits: a DigitsCNN teacher and a quarter-size student."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from torchferry.optimize.distill import distill, distillation_loss, model_logits
from torchferry.zoo.digits import DigitsCNN, accuracy, digits_split, train_digits


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def student(seed: int = 0) -> DigitsCNN:
    """DigitsCNN at half the width (16 conv channels, 64 hidden units): 38,282 parameters."""
    torch.manual_seed(seed)
    return DigitsCNN(channels=16, hidden=64)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Small models train faster on one thread, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def teacher(one_thread) -> tuple[DigitsCNN, float]:
    return train_digits(seed=0)


@pytest.fixture(scope="module")
def split() -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    x_train, x_test, y_train, y_test = digits_split()
    return torch.from_numpy(x_train), torch.from_numpy(y_train), x_test, y_test


def test_student_has_at_most_half_the_parameters():
    assert count(DigitsCNN()) == 151_306
    assert count(student()) == 38_282 <= count(DigitsCNN()) // 2


def test_distilled_student_is_within_two_points_of_the_teacher(teacher, split):
    model, teacher_accuracy = teacher
    x_train, y_train, x_test, y_test = split
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    small = student()
    rng_state = torch.get_rng_state()
    result = distill(model, small, (x_train, y_train), epochs=12, lr=3e-3, batch_size=32)
    assert result is small and not small.training
    student_accuracy = accuracy(small, x_test, y_test)
    assert student_accuracy >= teacher_accuracy - 0.02, (student_accuracy, teacher_accuracy)
    assert not model.training  # the teacher keeps its mode and its weights
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert torch.equal(torch.get_rng_state(), rng_state)  # seeded without touching the RNG


def test_alpha_one_ignores_labels_and_alpha_zero_ignores_the_teacher(teacher, split):
    model, _ = teacher
    x_train, y_train, _, _ = split
    batches = [
        (x, y) for x, y in zip(x_train[:256].split(64), y_train[:256].split(64), strict=True)
    ]
    wrong = [(x, (y + 1) % 10) for x, y in batches]

    def run(data, alpha, tutor=model):
        return distill(tutor, student(), data, alpha=alpha, epochs=2).state_dict()

    pure_teacher = run(batches, 1.0)
    for key, value in run(wrong, 1.0).items():
        torch.testing.assert_close(value, pure_teacher[key], rtol=0, atol=0)
    other_teacher = DigitsCNN()
    pure_labels = run(batches, 0.0)
    for key, value in run(batches, 0.0, other_teacher).items():
        torch.testing.assert_close(value, pure_labels[key], rtol=0, atol=0)
    initial = student().state_dict()
    assert not torch.equal(pure_teacher["classifier.4.weight"], initial["classifier.4.weight"])
    assert not torch.equal(pure_labels["classifier.4.weight"], pure_teacher["classifier.4.weight"])


def test_logits_extraction(teacher, split):
    model, _ = teacher
    x_train, y_train, _, _ = split
    x = x_train[:4]
    torch.testing.assert_close(model_logits(model, x), model.logits(x))  # not the softmax
    plain = nn.Sequential(nn.Linear(64, 10))
    torch.testing.assert_close(model_logits(plain, x), plain(x))

    seen: list[type] = []

    def from_probabilities(net: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        seen.append(type(net))
        return torch.log(net(inputs).clamp_min(1e-9)) if isinstance(net, DigitsCNN) else net(inputs)

    distill(model, plain, (x_train[:64], y_train[:64]), epochs=1, logits=from_probabilities)
    assert seen == [DigitsCNN, nn.Sequential]


def test_loss_is_hinton_kl_times_t_squared_plus_cross_entropy():
    torch.manual_seed(0)
    s, t, labels = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    kl = (F.softmax(t / 3, 1) * (F.log_softmax(t / 3, 1) - F.log_softmax(s / 3, 1))).sum(1)
    expected = 0.25 * 9 * kl.mean() + 0.75 * F.cross_entropy(s, labels)
    torch.testing.assert_close(distillation_loss(s, t, labels, 3.0, 0.25), expected)
    assert float(distillation_loss(t, t, labels, 4.0, 1.0)) == pytest.approx(0.0, abs=1e-6)


def test_refuses_bad_arguments(teacher):
    model, _ = teacher
    pair = (torch.zeros(4, 64), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="alpha"):
        distill(model, student(), pair, alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        distill(model, student(), pair, temperature=0.0)
    with pytest.raises(ValueError, match="one-shot"):
        distill(model, student(), iter([pair]), epochs=2)
    distill(model, student(), iter([pair]), epochs=1)  # a generator is fine for one epoch
