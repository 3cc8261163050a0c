"""Package a bundle as a versioned, self-contained artifact.

::

    python -m tools.package bundles/btcv_segmentation                                  # configs and docs only
    python -m tools.package bundles/btcv_segmentation --weights bundles/btcv_segmentation/models/model.pt
    python -m tools.package bundles/mim_pretrain --dist /releases --source_url https://example.org/releases

writes ``<dist>/<name>_v<version>.zip`` (``dist/`` of the repository unless ``--dist`` names another) holding one
top-level folder ``<name>/``::

    <name>/configs/...       the bundle's configs, metadata.json among them
    <name>/docs/...          its documentation
    <name>/LICENSE
    <name>/common/...        the collection's shared package, vendored: the unzipped folder runs on its own
    <name>/models/model.pt   the weights, when --weights is given

The zip is reproducible: the same inputs give the same bytes (sorted entries, fixed time stamps and permissions).
``<dist>/model_info.json`` gets the entry ``"<name>_v<version>": {"checksum": <sha256 of the zip>, "source": <url>}``
in the format of MONAI's model zoo; the source is ``<source_url>/<zip name>`` (default: the zip's ``file://`` URI, which
``python -m monai.bundle download --name <name> --url <source>`` fetches and unpacks). Finally the bundle's version and
fingerprint go into ``bundles/releases.json`` (:mod:`tools.releases`), against which ``tools.verify`` checks later changes.

Before packaging, the bundle must pass ``tools.verify``'s file, metadata and config checks, and the version must be
new or the same as the last packaged one with unchanged files; an artifact of that name with other bytes is never
overwritten (bump the version instead).
"""

from __future__ import annotations

import hashlib
import json
import sys
import zipfile
from pathlib import Path

import fire
import torch

from common.transfer import STATE_DICT_KEYS, extract_state_dict
from tools.releases import bundle_files, fingerprint, record_release, release_problems
from tools.verify import check_configs, check_files, check_metadata, read_json

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMON_DIR = REPO_ROOT / "common"
DEFAULT_DIST = REPO_ROOT / "dist"
MODEL_INFO = "model_info.json"
# Fixed entry attributes of a reproducible zip: the earliest time a zip can store, rw-r--r-- regular files.
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
ZIP_FILE_MODE = 0o100644 << 16


def artifact_entries(bundle: Path, weights: Path | None = None) -> dict[str, Path]:
    """Archive name -> source file of every file in the artifact of ``bundle``, names sorted.

    Args:
        bundle: the bundle folder (``bundles/<name>``).
        weights: a checkpoint to ship as ``models/model.pt``.
    """
    name = bundle.name
    entries = {f"{name}/{path.relative_to(bundle).as_posix()}": path for path in bundle_files(bundle)}
    for path in COMMON_DIR.rglob("*.py"):
        entries[f"{name}/common/{path.relative_to(COMMON_DIR).as_posix()}"] = path
    if weights is not None:
        entries[f"{name}/models/model.pt"] = weights
    return dict(sorted(entries.items()))


def write_reproducible_zip(entries: dict[str, Path], path: Path) -> None:
    """Write ``entries`` (archive name -> file) to the zip ``path``; the bytes depend on the names and contents only."""
    with zipfile.ZipFile(path, "w") as archive:
        for arcname, source in entries.items():
            info = zipfile.ZipInfo(arcname, date_time=ZIP_DATE_TIME)
            info.external_attr = ZIP_FILE_MODE
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, source.read_bytes(), compresslevel=9)


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_weights(weights: Path) -> None:
    """``weights`` is a checkpoint of tensors that loads without unpickling code (what MONAI Label loads).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it does not load with ``weights_only=True`` or holds no tensor.
    """
    if not weights.is_file():
        raise FileNotFoundError(f"--weights {weights} does not exist")
    try:
        checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"--weights {weights} does not load as a checkpoint of tensors: {e}") from e
    if not isinstance(checkpoint, dict) or not extract_state_dict(checkpoint):
        raise ValueError(f"--weights {weights} holds no state dict (at the top level or under {STATE_DICT_KEYS})")


def bundle_problems(bundle: Path, releases: Path | None = None) -> list[str]:
    """What stops ``bundle`` from being packaged: failed ``tools.verify`` checks and release record conflicts."""
    problems = [f"{r.check}: {r.detail}" for r in (check_files(bundle), check_metadata(bundle), check_configs(bundle))
                if r.status == "FAIL"]
    if not problems:
        version = read_json(bundle / "configs" / "metadata.json")["version"]
        problems += release_problems(bundle, version, releases)
    return problems


def update_model_info(dist: Path, key: str, checksum: str, source: str) -> None:
    """Set ``key``'s entry of ``<dist>/model_info.json``, keeping the others."""
    path = dist / MODEL_INFO
    info = json.loads(path.read_text()) if path.is_file() else {}
    info[key] = {"checksum": checksum, "source": source}
    path.write_text(json.dumps(dict(sorted(info.items())), indent=4) + "\n")


def package(
    bundle: str,
    weights: str | None = None,
    dist: str | None = None,
    source_url: str | None = None,
    releases: Path | None = None,
) -> Path:
    """Write the artifact ``<dist>/<name>_v<version>.zip`` of ``bundle`` and record it; returns its path.

    Args:
        bundle: the bundle folder, e.g. ``bundles/btcv_segmentation``.
        weights: a checkpoint shipped as ``models/model.pt`` (e.g. the bundle's own ``models/model.pt``).
        dist: output folder, default ``<repository>/dist``.
        source_url: where the artifact will be published (a folder URL); default the zip's ``file://`` URI.
        releases: the release record to check and update (:data:`tools.releases.RELEASES_FILE`).

    Raises:
        ValueError: the bundle fails a check, or an artifact of the same version with other bytes exists.
    """
    bundle_dir = Path(bundle).resolve()
    problems = bundle_problems(bundle_dir, releases)
    if problems:
        raise ValueError(f"cannot package {bundle_dir}: " + "; ".join(problems))
    weights_path = Path(weights).resolve() if weights else None
    if weights_path is not None:
        check_weights(weights_path)
    version = read_json(bundle_dir / "configs" / "metadata.json")["version"]
    key = f"{bundle_dir.name}_v{version}"
    dist_dir = Path(dist).resolve() if dist else DEFAULT_DIST
    dist_dir.mkdir(parents=True, exist_ok=True)
    artifact = dist_dir / f"{key}.zip"

    staged = artifact.with_suffix(".zip.partial")
    write_reproducible_zip(artifact_entries(bundle_dir, weights_path), staged)
    checksum = sha256(staged)
    if artifact.is_file() and sha256(artifact) != checksum:
        staged.unlink()
        raise ValueError(
            f"{artifact} exists with other content: version {version} was packaged before from other files or "
            "weights; bump the version in configs/metadata.json (with a changelog entry) or remove the old artifact"
        )
    staged.replace(artifact)

    source = f"{source_url.rstrip('/')}/{artifact.name}" if source_url else artifact.as_uri()
    update_model_info(dist_dir, key, checksum, source)
    record_release(bundle_dir.name, version, fingerprint(bundle_dir), releases)
    return artifact


def main(bundle: str, weights: str | None = None, dist: str | None = None, source_url: str | None = None) -> None:
    """``python -m tools.package bundles/<name> [--weights PATH] [--dist DIR] [--source_url URL]``."""
    try:
        artifact = package(bundle, weights=weights, dist=dist, source_url=source_url)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"tools.package: {e}")
    print(f"{artifact} ({artifact.stat().st_size / 1e6:.1f} MB, sha256 {sha256(artifact)})")


if __name__ == "__main__":
    fire.Fire(main)
