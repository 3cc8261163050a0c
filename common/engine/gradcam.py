"""Grad-CAM overlays of a slice classifier: where in a slice the predicted class's evidence lies.

Grad-CAM (Selvaraju et al., ICCV 2017, Eq. 1-2): the feature maps ``A^k`` of a target layer are weighted by the
spatial mean of the gradient of the class score ``y^c`` with respect to them, summed and rectified,
``L^c = ReLU(sum_k alpha_k^c A^k)``, ``alpha_k^c = mean_ij dy^c / dA^k_ij``; MONAI's
:class:`~monai.visualize.GradCAM` computes it, up-samples it to the input and scales it to ``[0, 1]``. For the
ResNet-50 of the slice study the target layer is ``layer4`` (1/32 of the input: a 7 x 7 map at 224 pixels).
"""

from __future__ import annotations

import copy
import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from matplotlib.figure import Figure
from monai.visualize import GradCAM
from torch import nn

logger = logging.getLogger(__name__)


def save_gradcam_overlays(
    network: nn.Module,
    dataset: Sequence[dict],
    class_names: Sequence[str],
    output_dir: str | os.PathLike,
    num_images: int = 8,
    target_layer: str = "layer4",
    device: str | torch.device | None = None,
) -> list[Path]:
    """Save a PNG per image: the slice in grey under the Grad-CAM heat map of the predicted class.

    The title names the true class (where the item has a ``"label"``), the predicted class and its probability.
    The network is copied first, so no hook stays on it and its frozen / training state is left as it is.

    Args:
        network: a classifier ``(1, 1, H, W)`` -> logits ``(1, num_classes)`` with a module named ``target_layer``.
        dataset: items ``{"image": (1, H, W) tensor, "label": index}`` (e.g. the test ``Dataset``); the first
            ``num_images`` are drawn.
        class_names: name of each class index.
        output_dir: folder of the PNGs (created), named ``<index>_<image file stem>.png``.
        num_images: how many images to draw (fewer if the dataset is shorter).
        target_layer: the layer whose maps Grad-CAM weighs.
        device: where to compute; default that of the network's parameters.

    Returns:
        the paths of the written PNGs.
    """
    module = network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network
    device = torch.device(device) if device is not None else next(module.parameters()).device
    model = copy.deepcopy(module).to(device).eval().requires_grad_(True)
    cam = GradCAM(nn_module=model, target_layers=target_layer)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(min(num_images, len(dataset))):
        item = dataset[index]
        image = torch.as_tensor(item["image"]).float()[None].to(device)
        with torch.enable_grad():
            heat = cam(image)[0, 0].detach().cpu().numpy()
        with torch.no_grad():
            probabilities = torch.softmax(model(image), dim=1)[0].cpu()
        predicted = int(probabilities.argmax())
        truth = f"true {class_names[int(item['label'])]}, " if "label" in item else ""
        title = f"{truth}predicted {class_names[predicted]} ({float(probabilities[predicted]):.2f})"
        source = getattr(item["image"], "meta", {}).get("filename_or_obj", f"image_{index}")
        path = output_dir / f"{index:03d}_{Path(str(source)).stem}.png"
        _save_overlay(image[0, 0].cpu().numpy(), heat, title, path)
        written.append(path)
    logger.info("wrote %d Grad-CAM overlays (%s) to %s", len(written), target_layer, output_dir)
    return written


def _save_overlay(image: np.ndarray, heat: np.ndarray, title: str, path: Path) -> None:
    """``image`` in grey (its own range) under ``heat`` (``[0, 1]``, jet, 40 % opaque), with ``title``."""
    figure = Figure(figsize=(4, 4.3), dpi=100)
    axes = figure.add_subplot()
    axes.imshow(image, cmap="gray")
    axes.imshow(heat, cmap="jet", alpha=0.4, vmin=0.0, vmax=1.0)
    axes.set_title(title, fontsize=9)
    axes.axis("off")
    figure.savefig(path, bbox_inches="tight")


class GradCamSaver:
    """Ignite handler: :func:`save_gradcam_overlays` when the engine completes (e.g. the test evaluator).

    Args: those of :func:`save_gradcam_overlays`.
    """

    def __init__(
        self,
        network: nn.Module,
        dataset: Sequence[dict],
        class_names: Sequence[str],
        output_dir: str | os.PathLike,
        num_images: int = 8,
        target_layer: str = "layer4",
        device: str | torch.device | None = None,
    ) -> None:
        self.save = functools.partial(
            save_gradcam_overlays, network, dataset, list(class_names), output_dir, num_images, target_layer, device
        )

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> list[Path]:
        return self.save()
