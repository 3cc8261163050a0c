"""Shared code of the ct-ssl-bundles collection: data, transforms, networks, methods and engine.

Bundles are configuration only; everything they run is imported from this package
(``"$import common"`` in a bundle config).
"""
