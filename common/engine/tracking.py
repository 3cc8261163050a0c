"""Experiment tracking: the MLflow store a bundle logs to, one run whichever way tracking is asked for, and the
run's parameters read from its resolved config."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
from monai.bundle.utils import ID_SEP_KEY
from monai.handlers import MLFlowHandler
from monai.utils import path_to_sqlite_uri


def tracking_uri(output_dir: str | Path) -> str:
    """The store a bundle with ``output_dir`` logs to, as its :class:`~monai.handlers.MLFlowHandler` resolves it
    (for tools that read the runs back): ``$MLFLOW_TRACKING_URI`` when set, else MONAI's default, a sqlite store at
    ``<output_dir>/mlruns.db`` (MONAI 1.6 rejects a plain folder, MLflow's deprecated file store)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    return path_to_sqlite_uri(str(Path(output_dir) / "mlruns.db"))


def keep_one_mlflow_handler(engine: Engine, handlers: Sequence, keep: MLFlowHandler | None) -> None:
    """Detach from ``engine`` every :class:`~monai.handlers.MLFlowHandler` of ``handlers`` but the bundle's ``keep``.

    ``python -m monai.bundle run ... --tracking mlflow`` (MONAI's convention) appends MONAI's default handler to
    ``train#handlers`` and ``validate#handlers``. It logs to the same store, experiment and run as the bundle's own
    (``tracking_uri``, ``experiment_name``, ``run_name``), so every metric would be logged twice; the bundle's handler
    logs more (every loss term, the run's parameters, learning rates, artifacts) and stays. With the bundle's turned
    off (``keep`` None: ``--experiment_tracking false``) an explicit ``--tracking mlflow`` keeps MONAI's.
    """
    if keep is None:
        return
    for handler in handlers:
        if not isinstance(handler, MLFlowHandler) or handler is keep:
            continue
        methods = (
            (Events.STARTED, handler.start),
            (Events.ITERATION_COMPLETED, handler.iteration_completed),
            (Events.EPOCH_COMPLETED, handler.epoch_completed),
            (Events.COMPLETED, handler.complete),
            (Events.COMPLETED, handler.close),
        )
        for event, method in methods:
            if engine.has_event_handler(method, event):
                engine.remove_event_handler(method, event)


# Settings of one invocation rather than of the run: a resumed run (logged into the same MLflow run, which refuses
# to change a parameter) may give them new values.
INVOCATION_SETTINGS = ("resume", "resume_from", "run_name", "num_workers")
# A bundle's recipe table and the recipe chosen from it (common.recipes): each value is logged under the top-level id
# that reads it, and ``recipe`` names the recipe.
RECIPE_TABLES = ("recipes", "recipe_settings")


class RunParameters(Mapping[str, Any]):
    """The MLflow parameters of a run: the resolved config, with no second copy of its keys.

    Every top-level id of the bundle's config that the run resolved is a parameter when its value is plain: a
    number, string, boolean or ``None``, or a list, tuple or dict of those (a network's settings, a crop size);
    objects (datasets, networks, devices), values longer than MLflow accepts, :data:`INVOCATION_SETTINGS` and
    :data:`RECIPE_TABLES` are left out (the config files are logged as artifacts). Two sections merge in flat: ``flags``, each boolean
    setting as :func:`common.cli.flag` reads it, under the setting's own name; and ``derived``, values the config
    does not hold as such (the data set's size, a method's label).

    The parameters are collected the first time the mapping is read: :class:`monai.handlers.MLFlowHandler` reads
    it when the run starts, once the trainer and everything it uses are resolved.

    Args:
        resolved: the config ids resolved so far, by id. In a bundle config that is ``__local_refs``, the map
            MONAI's ``ReferenceResolver`` hands every ``$`` expression; it fills as the config resolves.
        derived: parameters to add (they win over resolved ids of the same name).
    """

    def __init__(self, resolved: Mapping[str, Any], derived: Mapping[str, Any] | None = None) -> None:
        self.resolved = resolved
        self.derived = dict(derived or {})

    @cached_property
    def _parameters(self) -> dict[str, Any]:
        top_level = {key: value for key, value in self.resolved.items() if ID_SEP_KEY not in key}
        top_level.update(top_level.pop("flags", None) or {})
        top_level.pop("hyper_parameters", None)
        parameters = {
            key: value
            for key, value in top_level.items()
            if key not in INVOCATION_SETTINGS + RECIPE_TABLES and _is_plain(value)
        }
        return {**parameters, **self.derived}

    def __getitem__(self, key: str) -> Any:
        return self._parameters[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._parameters)

    def __len__(self) -> int:
        return len(self._parameters)


def _is_plain(value: Any) -> bool:
    """A scalar, or a flat list, tuple or dict of scalars, that MLflow accepts as a parameter value."""
    scalars = (type(None), bool, int, float, str)
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
    return all(isinstance(item, scalars) for item in items) and len(str(value)) <= MAX_PARAM_VAL_LENGTH
