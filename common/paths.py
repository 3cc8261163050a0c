"""Where a bundle lives, whatever the current directory.

Outputs stay inside the bundle (``models/``, ``eval/``). A bundle config sets
``"bundle_root": "$common.paths.bundle_root(@bundle_name)"``; MONAI Label and ``--bundle_root`` override it.
"""

from __future__ import annotations

from pathlib import Path

# The folder holding the ``common`` package: the repository root, or a packaged bundle's own folder
# (``tools.package`` vendors ``common/`` into the bundle).
PACKAGE_PARENT = Path(__file__).resolve().parent.parent


def bundle_root(name: str) -> str:
    """Absolute path of bundle ``name``: ``<repo>/bundles/<name>``, or the packaged bundle folder itself.

    Raises:
        FileNotFoundError: neither layout holds ``configs/metadata.json`` for ``name``.
    """
    in_repository = PACKAGE_PARENT / "bundles" / name
    for candidate in (in_repository, PACKAGE_PARENT):
        if (candidate / "configs" / "metadata.json").is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"bundle {name!r} not found: no configs/metadata.json under {in_repository} or {PACKAGE_PARENT}; "
        "pass --bundle_root explicitly"
    )
