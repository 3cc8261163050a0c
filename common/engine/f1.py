"""The F1 score as Wolf et al. (Sci. Rep. 2023) report it, beside the macro average.

The study's downstream code (``Downstream/Brain.ipynb``, ``COVID-19.ipynb``, ``OrgMNIST.ipynb`` of its repository)
computes ``sklearn.metrics.f1_score(labels, predictions)``: for its two-class tasks the binary F1 of the positive
class (label 1), and ``average='micro'`` for the eleven classes of OrganSMNIST, which for one label per image equals
the accuracy. The macro average over the classes, what ignite's ``Fbeta(average=True)`` gives, differs (for two
classes it also counts the negative class) and would move the reduction study's stop rule (mean F1 below 0.7).
"""

from __future__ import annotations

from collections.abc import Callable

from ignite.metrics import Accuracy, Fbeta, Metric

POSITIVE_CLASS = 1


def study_f1(num_classes: int, output_transform: Callable) -> Metric:
    """The study's F1 of ``(pred, label)`` pairs: ``pred`` ``(N, C)`` class scores, ``label`` ``(N,)`` indices.

    Args:
        num_classes: ``C``; 2: the F1 of class :data:`POSITIVE_CLASS`; more: the micro average (the accuracy).
        output_transform: from the engine's output to ``(pred, label)``.

    Raises:
        ValueError: fewer than two classes.
    """
    if num_classes < 2:
        raise ValueError(f"F1 needs at least two classes, got {num_classes}")
    if num_classes == 2:
        return Fbeta(1.0, average=False, output_transform=output_transform)[POSITIVE_CLASS]
    return Accuracy(output_transform=output_transform)
