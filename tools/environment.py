"""``python -m tools.environment``: the versions this collection runs on, one line each.

Python, torch (its CUDA build and the devices it sees), MONAI, spconv and cumm. ``python -m tools.verify`` prints
the same lines first. spconv and cumm are read from the installed packages' metadata (``spconv-cu120``,
``spconv-cu124`` ...), without importing spconv, whose import takes seconds.
"""

from __future__ import annotations

import platform
from importlib import metadata

import monai
import torch


def installed_distribution(name: str) -> str | None:
    """``"<distribution> <version>"`` of the installed package ``name`` or ``name-<build>`` (``spconv-cu124``)."""
    for distribution in metadata.distributions():
        found = (distribution.metadata["Name"] or "").lower().replace("_", "-")
        if found == name or found.startswith(f"{name}-"):
            return f"{found} {distribution.version}"
    return None


def torch_line() -> str:
    """torch's version, the CUDA version it was built for and the CUDA devices it sees."""
    count = torch.cuda.device_count()
    available = "yes" if torch.cuda.is_available() else "no"
    cuda = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build, CUDA"
    return f"torch {torch.__version__} ({cuda} available: {available}, {count} device{'' if count == 1 else 's'})"


def environment_report() -> list[str]:
    """The lines of the report: Python, torch, MONAI, spconv, cumm."""
    spconv = installed_distribution("spconv") or "spconv not installed: the masked sparse back-end is used"
    return [
        f"Python {platform.python_version()}",
        torch_line(),
        f"MONAI {monai.__version__}",
        spconv,
        installed_distribution("cumm") or "cumm not installed",
    ]


def print_environment_report() -> None:
    """Print :func:`environment_report`, one line each."""
    print("\n".join(environment_report()), flush=True)


if __name__ == "__main__":
    print_environment_report()
