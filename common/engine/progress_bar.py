"""ignite's progress bar with the loss in it, attachable the way MONAI attaches handlers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ignite.engine import Engine
from ignite.handlers import ProgressBar as IgniteProgressBar


class ProgressBar(IgniteProgressBar):
    """ignite's ``ProgressBar`` whose ``attach(engine)`` shows what ``output_transform`` (given here) selects.

    MONAI calls ``handler.attach(engine)`` without arguments, so ignite's bar built from a config shows no loss;
    this one takes the ``output_transform`` in its constructor. A scalar it returns is shown as ``output_name``
    (ignite would call it ``output``), a dict entry by entry.

    Args:
        desc: text before the bar, e.g. ``"train"``.
        output_transform: selects what to show from ``engine.state.output``:
            :func:`common.engine.logged_scalars` for :class:`common.engine.SelfSupervisedTrainer`,
            ``monai.handlers.from_engine(["loss"], first=True)`` for MONAI's ``SupervisedTrainer``; ``None`` shows
            no values.
        output_name: the name of a scalar that ``output_transform`` returns.
        persist: keep the bar on screen after each epoch.
        tqdm_kwargs: more ``tqdm`` arguments (``file``, ``ncols``, ...).
    """

    def __init__(
        self,
        desc: str | None = None,
        output_transform: Callable[[Any], Any] | None = None,
        output_name: str = "loss",
        persist: bool = False,
        **tqdm_kwargs: Any,
    ) -> None:
        super().__init__(persist=persist, desc=desc, **tqdm_kwargs)
        self.output_transform = output_transform
        self.output_name = output_name

    def attach(self, engine: Engine, **kwargs: Any) -> None:  # type: ignore[override]
        """Attach as ignite's ``ProgressBar.attach`` does, with the constructor's ``output_transform``."""
        if self.output_transform is not None:
            kwargs.setdefault("output_transform", self._named_output)
        super().attach(engine, **kwargs)

    def _named_output(self, output: Any) -> Mapping[str, Any]:
        values = self.output_transform(output)
        return dict(values) if isinstance(values, Mapping) else {self.output_name: values}
