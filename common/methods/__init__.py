"""Self-supervised methods: one module each, ``forward(batch) -> {"loss", "loss/<part>", "images"}``."""

from common.methods.glmae import GLMAE
from common.methods.hyspark import HySparK
from common.methods.mae import MAE3D
from common.methods.mim import MIM_GEOMETRIES, MiM, MiMGeometry, mim_geometry
from common.methods.spark import SparK, SparK3D

__all__ = ["GLMAE", "MAE3D", "MIM_GEOMETRIES", "HySparK", "MiM", "MiMGeometry", "SparK", "SparK3D", "mim_geometry"]
