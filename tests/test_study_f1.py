"""common.engine.study_f1: Wolf et al.'s F1 (binary F1 of the positive class; micro F1 for more classes) on hand-made
confusion matrices, against the macro average the slice classifier also logs."""

import pytest
import torch
from ignite.engine import Engine
from ignite.metrics import Fbeta

from common.engine import study_f1


def evaluated(metric, scores: torch.Tensor, labels: torch.Tensor) -> float:
    engine = Engine(lambda engine, batch: batch)
    metric.attach(engine, "f1")
    return float(engine.run([(scores, labels)]).metrics["f1"])


def one_hot_scores(predicted: list[int], num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(predicted), num_classes).float()


def test_two_classes_give_the_f1_of_the_positive_class():
    # positives 1, 1, 1 -> predicted 1, 1, 0; negatives 0 x 5 -> predicted 1, 0, 0, 0, 0: TP 2, FN 1, FP 1, TN 4
    labels = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0])
    scores = one_hot_scores([1, 1, 0, 1, 0, 0, 0, 0], 2)
    assert evaluated(study_f1(2, lambda output: output), scores, labels) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    # the macro average also counts the negative class (F1 8 / 10) and is higher here
    macro = evaluated(Fbeta(1.0, average=True, output_transform=lambda output: output), scores, labels)
    assert macro == pytest.approx((4 / 6 + 8 / 10) / 2)


def test_more_classes_give_the_micro_f1_which_is_the_accuracy():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    scores = one_hot_scores([0, 1, 1, 1, 2, 0], 3)
    assert evaluated(study_f1(3, lambda output: output), scores, labels) == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="at least two classes"):
        study_f1(1, lambda output: output)
