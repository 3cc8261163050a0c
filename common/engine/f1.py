"""The F1 score as Wolf et al. (Sci. Rep. 2023) report it, beside the macro average, and the positive class it scores.

The study's downstream code (``Downstream/Brain.ipynb``, ``COVID-19.ipynb``, ``OrgMNIST.ipynb`` of its repository)
computes ``sklearn.metrics.f1_score(labels, predictions)``: for its two-class tasks the binary F1 of the positive
class (label 1), and ``average='micro'`` for the eleven classes of OrganSMNIST, which for one label per image equals
the accuracy. The macro average over the classes, what ignite's ``Fbeta(average=True)`` gives, differs (for two
classes it also counts the negative class) and would move the reduction study's stop rule (mean F1 below 0.7).

Which class is positive is a name (:func:`positive_class_index`); the class indices, hence the network's outputs and
its ``channel_def``, do not change with it. The ROC AUC needs no positive class: for two classes the macro AUC of
softmax probabilities is the AUC of either class, since ``p_0 = 1 - p_1`` ranks the slices in reverse.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from ignite.metrics import Accuracy, Fbeta, Metric

logger = logging.getLogger(__name__)

POSITIVE_CLASS = 1


def positive_class_index(class_names: Sequence[str], positive_class: str | None = None) -> int | None:
    """The index of the class the F1 of a two-class task scores, logged by name.

    Args:
        class_names: the task's classes in index order.
        positive_class: one of ``class_names``; None: the second, index :data:`POSITIVE_CLASS` (the study's label 1).

    Returns:
        the index for two classes; None for more (their F1 is the micro average, without a positive class).

    Raises:
        ValueError: ``positive_class`` is not a class (the message lists them), or is given for more than two.
    """
    names = [str(name) for name in class_names]
    if positive_class is not None and str(positive_class) not in names:
        raise ValueError(f"positive_class {positive_class!r} is not a class of this task; its classes: {names}")
    if len(names) != 2:
        if positive_class is not None:
            raise ValueError(f"positive_class {positive_class!r} is set, but the task has {len(names)} classes; the "
                             "F1 of more than two classes is the micro average, which has no positive class")
        return None
    index = POSITIVE_CLASS if positive_class is None else names.index(str(positive_class))
    logger.info("the F1 (val_f1, test_f1) scores the positive class %r (index %d of %s)%s", names[index], index, names,
                "" if positive_class is not None else "; set positive_class to score the other")
    return index


def study_f1(num_classes: int, output_transform: Callable, positive_class: int | None = None) -> Metric:
    """The study's F1 of ``(pred, label)`` pairs: ``pred`` ``(N, C)`` class scores, ``label`` ``(N,)`` indices.

    Args:
        num_classes: ``C``; 2: the F1 of class ``positive_class``; more: the micro average (the accuracy).
        output_transform: from the engine's output to ``(pred, label)``.
        positive_class: the index of the positive class of two (:func:`positive_class_index`); None:
            :data:`POSITIVE_CLASS`. Must be None for more classes.

    Raises:
        ValueError: fewer than two classes; ``positive_class`` not 0 or 1, or given for more than two classes.
    """
    if num_classes < 2:
        raise ValueError(f"F1 needs at least two classes, got {num_classes}")
    if num_classes == 2:
        index = POSITIVE_CLASS if positive_class is None else positive_class
        if index not in (0, 1):
            raise ValueError(f"the positive class of two is index 0 or 1, got {positive_class!r}")
        return Fbeta(1.0, average=False, output_transform=output_transform)[index]
    if positive_class is not None:
        raise ValueError(f"the micro F1 of {num_classes} classes has no positive class, got {positive_class!r}")
    return Accuracy(output_transform=output_transform)
