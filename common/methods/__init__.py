"""Self-supervised methods: one module each, ``forward(batch) -> {"loss", "loss/<part>"}``;
the masked-modelling ones add ``"images"`` when asked (``forward(batch, images=True)``)."""

from common.methods.byol import BYOL
from common.methods.glmae import GLMAE
from common.methods.hyspark import HySparK
from common.methods.mae import MAE3D
from common.methods.mim import MIM_GEOMETRIES, MiM, MiMGeometry, mim_geometry
from common.methods.moco import MoCoV2
from common.methods.spark import SparK, SparK2D, SparK3D
from common.methods.spec import METHODS, method_spec
from common.methods.swav import SwAV

__all__ = [
    "BYOL",
    "GLMAE",
    "MAE3D",
    "METHODS",
    "MIM_GEOMETRIES",
    "HySparK",
    "MiM",
    "MiMGeometry",
    "MoCoV2",
    "SparK",
    "SparK2D",
    "SparK3D",
    "SwAV",
    "method_spec",
    "mim_geometry",
]
