"""Knowledge distillation (Hinton et al., 2015): train a small student on a teacher's
temperature-softened outputs and on the true labels."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import cast

import torch
from torch import nn
from torch.nn import functional as F

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def model_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model.logits(x)`` when the model has such a method, else ``model(x)``."""
    method = getattr(model, "logits", None)
    return method(x) if callable(method) else model(x)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)``, where
    ``_T`` is the softmax at temperature ``T``; the ``T^2`` keeps the soft term's gradients on
    the scale of the hard one's whatever ``T``."""
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    loss = alpha * temperature**2 * soft
    if alpha < 1.0:
        loss = loss + (1.0 - alpha) * F.cross_entropy(student_logits, labels)
    return loss


def _is_pair(data: object) -> bool:
    return (
        isinstance(data, tuple)
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
    )


def _batches(
    data: Batches | tuple[torch.Tensor, torch.Tensor],
    batch_size: int,
    generator: torch.Generator,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if _is_pair(data):
        inputs, labels = cast(tuple[torch.Tensor, torch.Tensor], data)
        for index in torch.randperm(len(inputs), generator=generator).split(batch_size):
            yield inputs[index], labels[index]
    else:
        yield from cast(Batches, data)


def distill(
    teacher: nn.Module,
    student: nn.Module,
    train_data: Iterable[tuple[torch.Tensor, torch.Tensor]] | tuple[torch.Tensor, torch.Tensor],
    *,
    temperature: float = 4.0,
    alpha: float = 0.5,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    logits: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
) -> nn.Module:
    """Train ``student`` to imitate ``teacher``, in place; return it, in eval mode.

    The loss per batch is ``alpha`` times the KL divergence between the teacher's and the
    student's softmax at ``temperature`` (scaled by ``temperature**2``, as in Hinton et al.)
    plus ``1 - alpha`` times the cross-entropy of the student on the true labels: ``alpha=1``
    learns from the teacher alone (labels are then unused), ``alpha=0`` from labels alone.
    Adam with learning rate ``lr`` for ``epochs`` passes over the data.

    ``train_data`` is an ``(inputs, labels)`` pair of tensors, batched by ``batch_size`` and
    reshuffled every epoch with ``seed``; or an iterable of ``(inputs, labels)`` batches (a
    list, a ``DataLoader``), iterated once per epoch, so it must be re-iterable when
    ``epochs > 1`` (a generator is refused), and ``batch_size`` does not apply. Batches are
    used on the device they come on; teacher and student must live there.

    Both models must give **logits**, not probabilities: ``logits(model, x)`` extracts them,
    by default ``model.logits(x)`` when the model has that method (``DigitsCNN``, whose
    ``forward`` ends in a softmax) and ``model(x)`` otherwise. Pass your own for models whose
    forward returns probabilities or several outputs. The teacher runs in eval mode under
    ``torch.no_grad`` (its mode is restored afterwards); the student trains in train mode.
    ``seed`` also seeds dropout in the student, without touching the global RNG's state.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be at least 1, got {epochs}, {batch_size}")
    if not _is_pair(train_data) and epochs > 1 and iter(train_data) is train_data:
        raise ValueError("train_data is a one-shot iterator; pass a list or a DataLoader")
    extract = logits or model_logits
    teacher_was_training = teacher.training
    teacher.eval()
    optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for _ in range(epochs):
                student.train()
                for inputs, labels in _batches(train_data, batch_size, generator):
                    with torch.no_grad():
                        soft_targets = extract(teacher, inputs)
                    loss = distillation_loss(
                        extract(student, inputs), soft_targets, labels, temperature, alpha
                    )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
    finally:
        teacher.train(teacher_was_training)
    return student.eval()
