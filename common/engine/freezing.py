"""Head-first fine-tuning: train only the classification head for the first epochs, then the whole network.

The downstream protocol of Wolf et al. 2023 (arXiv 2308.06534): the pre-trained ResNet-50 gets one new linear
layer; for the first 10 epochs only that layer is trained, so that a randomly initialised head does not send
large gradients into the pre-trained encoder, then the whole network is fine-tuned.
"""

from __future__ import annotations

import logging

from ignite.engine import Engine, Events
from torch import nn

logger = logging.getLogger(__name__)


class HeadFirstFineTuning:
    """Ignite handler: for epochs ``1 .. linear_epochs`` only the parameters under ``head`` train, afterwards all.

    At the start of every epoch it sets ``requires_grad`` of every parameter outside ``head`` to ``False``
    (epoch <= ``linear_epochs``) or ``True``. The optimizer holds all parameters from the start: a parameter
    without gradient is skipped by the optimizer's step (no update, no weight decay, no moment), so nothing has to
    be added to it at the switch. The state follows the epoch, so a resumed run freezes exactly as before.

    **BatchNorm statistics** keep updating during the frozen phase: the trainer runs the network in training
    mode, and running means and variances are buffers, not parameters, so ``requires_grad`` does not touch them.
    The frozen encoder's features are thereby normalised with statistics of the downstream slices (which differ
    from the pre-training slices in content, size and normalisation) rather than with stale ones; the BatchNorm
    scale and shift stay frozen. The official code (PyTorch Lightning's ``BackboneFinetuning``, ``train_bn=True``)
    also keeps the statistics updating, and trains the BatchNorm scale and shift too.

    Args:
        network: the network, or a ``DistributedDataParallel`` wrapping it (build it with
            ``find_unused_parameters=True``: frozen parameters get no gradient).
        linear_epochs: epochs that train only the head; 0 trains the whole network from the start.
        head: name prefix of the head's parameters (``fc`` of MONAI's ResNet).

    Raises:
        ValueError: ``linear_epochs`` < 0, or no parameter of ``network`` is under ``head``.
    """

    def __init__(self, network: nn.Module, linear_epochs: int = 10, head: str = "fc") -> None:
        if linear_epochs < 0:
            raise ValueError(f"linear_epochs must be >= 0, got {linear_epochs}")
        self.network = network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network
        self.head = head.rstrip(".") + "."
        if not any(name.startswith(self.head) for name, _ in self.network.named_parameters()):
            raise ValueError(f"{type(self.network).__name__} has no parameter under {head!r}; name the head layer")
        self.linear_epochs = linear_epochs

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        frozen = engine.state.epoch <= self.linear_epochs
        changed = 0
        for name, parameter in self.network.named_parameters():
            if not name.startswith(self.head) and parameter.requires_grad == frozen:
                parameter.requires_grad_(not frozen)
                changed += 1
        if changed:
            logger.info("epoch %d: %s", engine.state.epoch,
                        f"only {self.head[:-1]} trains" if frozen else "the whole network trains")
