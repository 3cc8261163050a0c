"""The record of packaged bundle versions, ``bundles/releases.json``, and the fingerprint it keeps of each bundle.

``python -m tools.package`` writes an entry per bundle: the ``version`` it packaged and the SHA-256 of the bundle's
own files at that moment (:func:`fingerprint`); the file is committed with the change. ``python -m tools.verify``
compares a bundle with its entry: files that changed while ``metadata.json`` still names the packaged version
fail the check, so every change that would reach users in an artifact comes with a version bump and a changelog
entry (MONAI model-zoo practice).

The fingerprint covers what a bundle folder holds in the repository (``configs/``, ``docs/``, ``LICENSE``), not the
shared ``common/`` package that :mod:`tools.package` vendors into every artifact: a change there would otherwise
force a bump of every bundle at once. Artifacts are still identified by their bytes, see ``dist/model_info.json``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

RELEASES_FILE = Path(__file__).resolve().parents[1] / "bundles" / "releases.json"
BUNDLE_CONTENT = ("configs", "docs", "LICENSE")


def bundle_files(bundle: Path) -> list[Path]:
    """The bundle's own files that an artifact ships (:data:`BUNDLE_CONTENT`), sorted by their relative path."""
    files = []
    for name in BUNDLE_CONTENT:
        path = bundle / name
        candidates = [path] if path.is_file() else path.rglob("*")
        files += [p for p in candidates if p.is_file() and "__pycache__" not in p.parts]
    return sorted(files, key=lambda p: p.relative_to(bundle).as_posix())


def fingerprint(bundle: Path) -> str:
    """SHA-256 over the relative paths and bytes of :func:`bundle_files`: it changes when any of them does."""
    digest = hashlib.sha256()
    for path in bundle_files(bundle):
        digest.update(path.relative_to(bundle).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def read_releases(path: Path | None = None) -> dict[str, dict[str, str]]:
    """``{bundle name: {"version": ..., "fingerprint": ...}}`` of ``path`` (default :data:`RELEASES_FILE`); empty
    when nothing was packaged yet."""
    path = path or RELEASES_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def record_release(name: str, version: str, bundle_fingerprint: str, path: Path | None = None) -> None:
    """Set ``name``'s entry in the record ``path`` (default :data:`RELEASES_FILE`; other entries kept, names
    sorted, so the file diffs cleanly)."""
    releases = read_releases(path)
    releases[name] = {"version": version, "fingerprint": bundle_fingerprint}
    (path or RELEASES_FILE).write_text(json.dumps(dict(sorted(releases.items())), indent=4) + "\n")


def version_key(version: str) -> tuple[int, ...]:
    """``"1.10.0"`` -> ``(1, 10, 0)``, for comparing semantic versions."""
    return tuple(int(part) for part in version.split("."))


def release_problems(bundle: Path, version: str, path: Path | None = None) -> list[str]:
    """Why ``bundle`` at ``version`` is not consistent with its last packaged release in the record ``path``
    (default :data:`RELEASES_FILE`); empty when it is.

    A bundle never packaged has no problem. Its version may not go backwards, and its files may only differ from
    the packaged ones under a new version.
    """
    released = read_releases(path).get(bundle.name)
    if released is None:
        return []
    if version_key(version) < version_key(released["version"]):
        return [f"version {version} is older than the packaged {released['version']}"]
    if version == released["version"] and fingerprint(bundle) != released["fingerprint"]:
        return [
            f"files changed since version {version} was packaged: bump version in configs/metadata.json "
            "and add a changelog entry"
        ]
    return []
