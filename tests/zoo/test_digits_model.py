from __future__ import annotations

import numpy as np
import torch

from torchferry.zoo.digits import DigitsCNN, digits_split, train_digits


def test_digits_split_is_fixed():
    x_train, x_test, _, y_test = digits_split()
    assert x_train.shape == (1347, 64) and x_test.shape == (450, 64)
    assert x_train.dtype == np.float32 and y_test.dtype == np.int64
    assert x_test.min() >= 0 and x_test.max() <= 16
    np.testing.assert_array_equal(digits_split()[1], x_test)


def test_forward_takes_flat_pixels_and_gives_probabilities():
    model = DigitsCNN().eval()
    probs = model(torch.rand(5, 64) * 16)
    assert probs.shape == (5, 10)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(5))


def test_training_is_deterministic_for_a_seed():
    model, accuracy = train_digits(seed=3, epochs=1)
    assert not model.training  # returned ready for inference
    again, accuracy_again = train_digits(seed=3, epochs=1)
    assert accuracy_again == accuracy
    for (name, a), (_, b) in zip(
        model.state_dict().items(), again.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    other, _ = train_digits(seed=4, epochs=1)
    assert not torch.equal(other.classifier[-1].weight, model.classifier[-1].weight)
