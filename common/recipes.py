"""Named training recipes of a bundle: one table, one name chosen on the command line.

A pre-training bundle's ``train.json`` keeps its recipes (how to train: batch, optimizer, schedule, masking) in one
``recipes`` table, ``paper`` (what the paper states; where it is silent, the official code's value), ``official``
(the official code's values) and ``cpu_demo`` (the CPU demo), and reads its top-level settings from the recipe that
``recipe`` names::

    "recipe": "$'cpu_demo' if @flags#cpu_demo_scale else 'paper'",
    "recipes": {"paper": {"learning_rate": 0.0001, ...}, "official": {...}, "cpu_demo": {...}},
    "recipe_settings": "$common.recipes.recipe_settings(@recipes, @recipe)",
    "learning_rate": "$@recipe_settings['learning_rate']",

so ``--recipe official`` switches them all, a single setting (``--learning_rate 3e-4``) still overrides one, and
adding a recipe touches one block. Each bundle's README lists every value with its source.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def recipe_settings(recipes: Mapping[str, Mapping[str, Any]], recipe: str, kind: str = "recipe") -> dict[str, Any]:
    """The settings of ``recipe`` in a bundle's ``recipes`` table (or another table of named presets, e.g. the
    segmentation tasks of :func:`common.data.task_settings`, named ``kind`` in the messages).

    Raises:
        ValueError: ``recipe`` is not in the table (the message lists those that are); or the entries do not set
            the same keys (a key only some set would silently keep another entry's value).
    """
    if recipe not in recipes:
        raise ValueError(f"unknown {kind} {recipe!r}; this bundle's {kind}s are {sorted(recipes)} (--{kind} NAME)")
    keys = {name: set(settings) for name, settings in recipes.items()}
    expected = keys[recipe]
    differing = {name: sorted(expected ^ names) for name, names in keys.items() if names != expected}
    if differing:
        raise ValueError(f"the {kind}s must set the same keys; these differ from {recipe!r}'s: {differing}")
    return dict(recipes[recipe])
