"""Losses of the self-supervised methods and of downstream segmentation, one module per family; each class cites the equation it implements.

- :mod:`~common.losses.reconstruction`: :func:`patchify`, :func:`unpatchify`, :class:`MaskedPatchReconstructionLoss`
  (SparK, MAE, MiM);
- :mod:`~common.losses.contrastive`: :class:`InfoNCELoss` (MoCo), :class:`CrossLevelContrastiveLoss` (MiM);
- :mod:`~common.losses.consistency`: :class:`GlobalGuidedConsistencyLoss` (GL-MAE);
- :mod:`~common.losses.swav`: :func:`sinkhorn_knopp`, :class:`SwAVLoss`;
- :mod:`~common.losses.byol`: :class:`BYOLLoss`;
- :mod:`~common.losses.segmentation`: :func:`segmentation_loss` of the downstream segmentation bundles
  (:class:`DiceBCELoss`, HySparK);
- :mod:`~common.losses.collapse`: :func:`embedding_std`, the collapse check the embedding methods log;
- :mod:`~common.losses.distributed`: :func:`~common.losses.distributed.all_reduced`, the reduction over processes
  that the consistency centre and Sinkhorn-Knopp share.
"""

from common.losses.byol import BYOLLoss
from common.losses.collapse import embedding_std
from common.losses.consistency import GlobalGuidedConsistencyLoss
from common.losses.contrastive import CrossLevelContrastiveLoss, InfoNCELoss
from common.losses.reconstruction import MaskedPatchReconstructionLoss, patchify, unpatchify
from common.losses.segmentation import DiceBCELoss, segmentation_loss
from common.losses.swav import SwAVLoss, sinkhorn_knopp

__all__ = [
    "BYOLLoss",
    "CrossLevelContrastiveLoss",
    "DiceBCELoss",
    "GlobalGuidedConsistencyLoss",
    "InfoNCELoss",
    "MaskedPatchReconstructionLoss",
    "SwAVLoss",
    "embedding_std",
    "patchify",
    "segmentation_loss",
    "sinkhorn_knopp",
    "unpatchify",
]
