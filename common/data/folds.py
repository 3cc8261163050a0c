"""Class-stratified folds, subsets and hold-outs of a labelled datalist: the splits of the classification bundles
and of their cross-validation.

Every function takes entries with an integer ``"label"`` and is deterministic for a seed:

- :func:`stratified_split`: fold ``fold`` of a stratified ``num_folds``-fold partition as ``(train, validation)``
  (the classifiers' default 20 % hold-out is fold 0 of 5);
- :func:`stratified_subset`: a stratified fraction, nested across fractions for one seed (dataset reduction, and the
  validation part of a fold);
- :func:`stratified_cross_validation`: Wolf et al. 2023 ("Brain"): "a five-fold stratified cross-validation using 10%
  of the training data for validation": fold ``fold`` is the test set, a stratified ``validation_fraction`` of the
  other folds (their "training data") the validation set, the rest the training set;
- :func:`check_stratified_folds`: whether ``num_folds`` stratified folds can each hold every class.

The plain (unstratified) k folds of the segmentation bundles are :func:`common.data.split_datalist`'s ``fold``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.data.errors import DatalistError


def _labels(datalist: Sequence[dict]) -> np.ndarray:
    """The ``"label"`` of every entry, ``(N,)``.

    Raises:
        DatalistError: an entry has no label.
    """
    unlabelled = [entry.get("image") for entry in datalist if "label" not in entry]
    if unlabelled:
        raise DatalistError(f"{len(unlabelled)} cases have no label, e.g. {unlabelled[0]}")
    return np.array([entry["label"] for entry in datalist])


def stratified_split(
    datalist: Sequence[dict], *, fold: int = 0, num_folds: int = 5, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """Deterministic stratified cross-validation: ``(train, validation)`` with fold ``fold`` as validation.

    The cases of each class are shuffled (``seed``), the classes laid end to end, and the cases dealt to the
    folds in turn, so every fold holds each class in proportion (within one case) and the folds differ in
    size by at most one. Folds are disjoint and together cover ``datalist``.

    Args:
        datalist: entries with an integer ``"label"``.
        fold: the fold to hold out, in ``0 .. num_folds - 1``.
        num_folds: number of folds, in ``2 .. len(datalist)``.
        seed: seed of the shuffles.

    Returns:
        ``(train, validation)``, each in the order of ``datalist``.

    Raises:
        DatalistError: an entry has no label; ``num_folds`` or ``fold`` is out of range.
    """
    labels = _labels(datalist)
    if not 2 <= num_folds <= len(datalist):
        raise DatalistError(f"num_folds must be in 2..{len(datalist)} (the number of cases), got {num_folds}")
    if not 0 <= fold < num_folds:
        raise DatalistError(f"fold must be in 0..{num_folds - 1}, got {fold}")
    rng = np.random.default_rng(seed)
    dealt = np.concatenate([rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)])
    held_out = set(dealt[fold::num_folds].tolist())
    train = [entry for i, entry in enumerate(datalist) if i not in held_out]
    validation = [entry for i, entry in enumerate(datalist) if i in held_out]
    return train, validation


def stratified_subset(items: Sequence[dict], fraction: float, seed: int = 0) -> list[dict]:
    """A random, class-stratified ``fraction`` of ``items``: the training-set reduction of the study.

    Each class ``c`` keeps ``max(1, round(fraction * n_c))`` of its ``n_c`` entries (Python's ``round``: halves to
    even), the first of a permutation of the class seeded by ``seed`` (``numpy.random.default_rng``). For one seed
    the permutation does not depend on ``fraction``, so the subsets are **nested**: a smaller fraction keeps a
    part of what a larger one keeps (the reduction removes cases, it never swaps them); another seed draws
    another subset.

    Args:
        items: entries with an integer ``"label"``.
        fraction: in ``(0, 1]``; 1 keeps everything.
        seed: seed of the draw.

    Returns:
        the kept entries, in the order of ``items``.

    Raises:
        DatalistError: ``fraction`` is outside ``(0, 1]`` or an entry has no label.
    """
    if not 0 < fraction <= 1:
        raise DatalistError(f"train_fraction must be in (0, 1], got {fraction}")
    labels = _labels(items)
    rng = np.random.default_rng(seed)
    kept = set()
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        kept.update(members[: max(1, round(fraction * len(members)))].tolist())
    return [entry for index, entry in enumerate(items) if index in kept]


def check_stratified_folds(datalist: Sequence[dict], num_folds: int) -> None:
    """Check that ``num_folds`` stratified folds of ``datalist`` each hold every class (a fold without a class has
    no AUC for it).

    Raises:
        DatalistError: an entry has no label; ``num_folds`` < 2, or more than the cases of the smallest class
            (the message names it).
    """
    labels = _labels(datalist)
    if num_folds < 2:
        raise DatalistError(f"num_folds must be at least 2, got {num_folds}")
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) and num_folds > counts.min():
        smallest = classes[counts.argmin()]
        raise DatalistError(f"{num_folds} stratified folds need at least {num_folds} cases of every class, but "
                            f"class {smallest} has {counts.min()}")


def stratified_cross_validation(
    datalist: Sequence[dict], *, fold: int, num_folds: int = 5, seed: int = 0, validation_fraction: float = 0.1
) -> tuple[list[dict], list[dict], list[dict]]:
    """``(train, validation, test)`` of fold ``fold`` of a stratified cross-validation with a validation hold-out.

    The test set is fold ``fold`` of :func:`stratified_split`; the validation set is :func:`stratified_subset`
    ``validation_fraction`` of the other folds (every class at least once), drawn with the same ``seed``; the
    training set is the rest. The three are disjoint and cover ``datalist``; over the folds, the test sets
    partition it.

    Args:
        datalist: entries with an integer ``"label"``.
        fold: the test fold, in ``0 .. num_folds - 1``.
        num_folds: number of folds, at most the cases of the smallest class.
        seed: seed of the folds and of the validation draw.
        validation_fraction: the share of each fold's training part held out for validation, in ``(0, 1)``.

    Returns:
        ``(train, validation, test)``, each in the order of ``datalist``.

    Raises:
        DatalistError: as :func:`check_stratified_folds` and :func:`stratified_split`; ``validation_fraction``
            outside ``(0, 1)``.
    """
    if not 0 < validation_fraction < 1:
        raise DatalistError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    check_stratified_folds(datalist, num_folds)
    rest, test = stratified_split(datalist, fold=fold, num_folds=num_folds, seed=seed)
    validation = stratified_subset(rest, validation_fraction, seed)
    held_out = {id(entry) for entry in validation}
    return [entry for entry in rest if id(entry) not in held_out], validation, test
