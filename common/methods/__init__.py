"""Self-supervised methods: one module each, ``forward(batch) -> {"loss", "loss/<part>", "images"}``."""

from common.methods.hyspark import HySparK
from common.methods.spark import SparK, SparK3D

__all__ = ["HySparK", "SparK", "SparK3D"]
