"""Shared code of the ct-ssl-bundles collection: data, transforms, networks, methods and engine.

Bundles are configuration only; everything they run is imported from this package
(``"$import common"`` in a bundle config).

Imports run one way, through the layers of :data:`LAYERS`, bottom first: a module imports from its own layer and
the layers below it, never from a layer above, and the packages and modules of a layer import each other without
a cycle (``tests/test_layers.py`` checks both). From the bottom:

0. neutral helpers that import nothing of ``common``: this package's ``__init__``, :mod:`common.paths` (where a
   bundle lives), :mod:`common.cli` (command-line settings), :mod:`common.recipes` (a bundle's named training
   recipes), :mod:`common.tensors` (tensor conversions), :mod:`common.previews` (PNG previews of images);
1. :mod:`common.data`: datalists, readers, the grey values of written slices, the demo data;
2. :mod:`common.transforms`: the MONAI transform pipelines, and what they need computed from the data;
3. the building blocks of networks and methods: :mod:`common.layers`, :mod:`common.masking`,
   :mod:`common.losses`, :mod:`common.lora`;
4. :mod:`common.sparse`: sparse-aware versions of the layers;
5. :mod:`common.networks`: encoders, decoders and downstream networks;
6. :mod:`common.methods`: one self-supervised method per module;
7. :mod:`common.engine`: the ignite glue that trains, validates and exports any method;
8. :mod:`common.transfer`: pre-trained weights into downstream networks.

``tools/`` sits above all of them.
"""

LAYERS: tuple[tuple[str, ...], ...] = (
    ("common", "common.paths", "common.cli", "common.recipes", "common.tensors", "common.previews"),
    ("common.data",),
    ("common.transforms",),
    ("common.layers", "common.masking", "common.losses", "common.lora"),
    ("common.sparse",),
    ("common.networks",),
    ("common.methods",),
    ("common.engine",),
    ("common.transfer",),
)
