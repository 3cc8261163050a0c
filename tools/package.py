"""Package a bundle as a versioned, self-contained artifact.

::

    python -m tools.package bundles/btcv_segmentation                                  # configs and docs only
    python -m tools.package bundles/btcv_segmentation --weights bundles/btcv_segmentation/models/model.pt
    python -m tools.package bundles/mim_pretrain --dist /releases --source_url https://example.org/releases
    python -m tools.package bundles/mim_pretrain --weights state_dict.pt --settings "{'cpu_demo_scale': True}"

writes ``<dist>/<name>_v<version>.zip`` (``dist/`` of the repository unless ``--dist`` names another) holding one
top-level folder ``<name>/``::

    <name>/configs/...       the bundle's configs, metadata.json among them
    <name>/docs/...          its documentation
    <name>/LICENSE
    <name>/common/...        the collection's shared package, vendored: the unzipped folder runs on its own
    <name>/models/model.pt   the weights, when --weights is given

The zip is reproducible: the same inputs give the same bytes (sorted entries, fixed time stamps and permissions).
``<dist>/model_info.json`` gets the entry ``"<name>_v<version>": {"checksum": <sha1 of the zip>, "source": <url>}``
in the format of MONAI's model zoo: the zoo's ``ci/update_model_info.py`` writes the hex SHA-1 of the zip
(``get_checksum(..., hash_func=get_hash_func(hash_type="sha1"))``) and its entries name no hash type, so neither do
ours; ``monai.apps.utils.check_hash(zip, checksum, hash_type="sha1")`` verifies one. The source is
``<source_url>/<zip name>`` (default: the zip's ``file://`` URI, which
``python -m monai.bundle download --name <name> --url <source>`` fetches and unpacks). The console line printed at the
end names the zip's SHA-256. Finally the bundle's version and fingerprint go into ``bundles/releases.json``
(:mod:`tools.releases`), against which ``tools.verify`` checks later changes.

Before packaging, the bundle must pass ``tools.verify``'s file, metadata and config checks, and the version must be
new or the same as the last packaged one with unchanged files; an artifact of that name with other bytes is never
overwritten (bump the version instead).

Weights and settings. The artifact's ``models/model.pt`` always carries its network (``network_spec``,
:mod:`common.networks.spec`; a pre-training bundle's method, :func:`common.methods.method_spec`), so inference and
MONAI Label rebuild it on any machine: the weights must load strictly into the network it describes, its input
channels and output labels go into the artifact's ``metadata.json`` (``network_data_format``), so
``verify_net_in_out`` and MONAI Label see what the weights really are, and ``train.json`` is set to train that network
(its ``network_spec`` and the top-level ids among the spec's settings), so MONAI Label's bundle trainer can continue
from the shipped weights on any machine. A checkpoint that a bundle's training saved carries its spec and needs no
setting. A plain state dict (a paper's release, another tool's weights) gets the spec of ``train.json``'s
``network_spec`` under ``--settings`` (a dict of top-level config ids), default ``{"cpu_demo_scale": false}`` (the
papers' sizes); weights of a CPU demo run need ``--settings "{'cpu_demo_scale': True}"``. ``--settings`` are also
written into every config of the artifact that defines them, e.g. the ``sw_batch_size`` of a MONAI Label app.
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path

import fire
import torch
from monai.apps.utils import SUPPORTED_HASH_TYPES
from monai.bundle import ConfigParser
from torch import nn

from common.networks.spec import SPEC_KEY, NetworkSpec, plain_values, spec_from_state
from common.transfer import STATE_DICT_KEYS, extract_state_dict
from tools.releases import bundle_files, fingerprint, record_release, release_problems
from tools.verify import check_configs, check_files, check_metadata, read_json

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMON_DIR = REPO_ROOT / "common"
DEFAULT_DIST = REPO_ROOT / "dist"
MODEL_INFO = "model_info.json"
# The hash of the model zoo's model_info.json checksums (its ci/update_model_info.py: get_hash_func(hash_type="sha1")).
MODEL_INFO_HASH_TYPE = "sha1"
# Fixed entry attributes of a reproducible zip: the earliest time a zip can store, rw-r--r-- regular files.
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
ZIP_FILE_MODE = 0o100644 << 16
# Settings under which a plain state dict gets its network spec unless others are given: the papers' network sizes.
WEIGHTS_SETTINGS = {"cpu_demo_scale": False}


def artifact_entries(bundle: Path, contents: Mapping[str, bytes] | None = None) -> dict[str, bytes]:
    """Archive name -> content of every file in the artifact of ``bundle``, names sorted.

    Args:
        bundle: the bundle folder (``bundles/<name>``).
        contents: files added to or replacing the bundle's own, by name inside the bundle (``models/model.pt``,
            the configs of :func:`configs_with`).
    """
    name = bundle.name
    files = {path.relative_to(bundle).as_posix(): path for path in bundle_files(bundle)}
    files.update({f"common/{path.relative_to(COMMON_DIR).as_posix()}": path for path in COMMON_DIR.rglob("*.py")})
    entries = {f"{name}/{inner}": path.read_bytes() for inner, path in files.items()}
    entries.update({f"{name}/{inner}": content for inner, content in (contents or {}).items()})
    return dict(sorted(entries.items()))


def write_reproducible_zip(entries: dict[str, bytes], path: Path) -> None:
    """Write ``entries`` (archive name -> content) to the zip ``path``; the bytes depend on the names and contents
    only."""
    with zipfile.ZipFile(path, "w") as archive:
        for arcname, content in entries.items():
            info = zipfile.ZipInfo(arcname, date_time=ZIP_DATE_TIME)
            info.external_attr = ZIP_FILE_MODE
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, content, compresslevel=9)


def file_hash(path: Path, hash_type: str) -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks, by a hash of MONAI's ``SUPPORTED_HASH_TYPES`` (the
    hashes ``monai.apps.utils.check_hash`` verifies)."""
    digest = SUPPORTED_HASH_TYPES[hash_type]()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_info_checksum(path: Path) -> str:
    """The ``checksum`` of ``path`` in ``model_info.json``: its hex SHA-1, as the model zoo's ``ci/utils.py``
    ``get_checksum`` computes it."""
    return file_hash(path, MODEL_INFO_HASH_TYPE)


def load_weights(weights: Path) -> dict:
    """The checkpoint ``weights``, checked to be one of tensors that loads without unpickling code (what MONAI
    Label loads); read once, then handed to the checks below.

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
    return checkpoint


def configs_with(bundle: Path, settings: Mapping) -> dict[str, bytes]:
    """The bundle's JSON configs that define a top-level id of ``settings``, with those ids set to the settings'
    values: name inside the bundle (``configs/<file>``) -> new content.

    Raises:
        ValueError: a setting is not a top-level id of any config.
    """
    changed, unknown = {}, set(settings)
    for path in sorted((bundle / "configs").glob("*.json")):
        config = read_json(path)
        ids = [key for key in settings if key in config] if path.name != "metadata.json" else []
        if ids:
            config.update({key: settings[key] for key in ids})
            changed[f"configs/{path.name}"] = (json.dumps(config, indent=4) + "\n").encode()
            unknown -= set(ids)
    if unknown:
        raise ValueError(f"settings {sorted(unknown)} are not top-level ids of any config in {bundle / 'configs'}")
    return changed


def saved_spec(checkpoint: Mapping, weights: Path) -> NetworkSpec | None:
    """The network the checkpoint ``weights`` carries (:data:`~common.networks.spec.SPEC_KEY`); None for a plain
    state dict."""
    return spec_from_state(checkpoint[SPEC_KEY], str(weights)) if SPEC_KEY in checkpoint else None


def train_json_spec(bundle: Path, settings: Mapping, pinned: Mapping | None = None) -> NetworkSpec:
    """The ``network_spec`` of ``configs/train.json`` under ``settings``: the network a plain state dict was trained
    as.

    Args:
        bundle: the bundle folder.
        settings: top-level config ids -> values.
        pinned: values for the ids among them that the config defines (e.g. ``epoch_length``, so that no data set
            is read for a setting that depends on it).

    Raises:
        ValueError: a setting names no id of the config.
    """
    config = bundle / "configs" / "train.json"
    parser = ConfigParser()
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser.read_config(str(config))
    unknown = [key for key in settings if key not in parser]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not an id of {config}")
    parser.update({"bundle_root": str(bundle), **{k: v for k, v in (pinned or {}).items() if k in parser}, **settings})
    return parser.get_parsed_content("network_spec")


def with_spec(checkpoint: Mapping, spec: NetworkSpec) -> bytes:
    """``model.pt`` bytes holding the weights of ``checkpoint`` under ``"model"`` and ``spec``, as training saves
    them."""
    buffer = io.BytesIO()
    torch.save({"model": extract_state_dict(checkpoint), SPEC_KEY: spec.state_dict()}, buffer)
    return buffer.getvalue()


def fit_problem(network: nn.Module, checkpoint: Mapping, weights: Path, what: str) -> str | None:
    """Why the checkpoint ``weights`` does not load strictly into ``network`` (described as ``what``); None when
    it does."""
    try:
        network.load_state_dict(extract_state_dict(checkpoint))
    except RuntimeError as e:
        return f"--weights {weights} do not fit {what}: {e}"
    return None


def metadata_with(bundle: Path, spec: NetworkSpec) -> dict[str, bytes]:
    """``configs/metadata.json`` with what ``spec`` decides of ``network_data_format`` (input channels, output labels;
    a pre-training method's feature channels and grid): in the first entry of each section (the network's input and
    output, as MONAI Label reads them)."""
    metadata = read_json(bundle / "configs" / "metadata.json")
    for section, values in spec.network_data_format(metadata["network_data_format"]).items():
        next(iter(metadata["network_data_format"][section].values())).update(values)
    return {"configs/metadata.json": (json.dumps(metadata, indent=4) + "\n").encode()}


def train_config_with_spec(bundle: Path, spec: NetworkSpec, configs: Mapping[str, bytes]) -> dict[str, bytes]:
    """``configs/train.json`` (as ``configs`` already changed it, else the bundle's) training the network ``spec``
    describes on any machine: its ``network_spec`` is the spec's factory called with the saved arguments, and every
    setting that is also a top-level id (``arch``, ``roi_size``, ``pixdim`` ...) takes the saved value. Where
    ``--settings`` leave ``cpu_demo_scale`` open and only one value of it makes ``train.json`` build that very network,
    it is set too, so the training defaults that go with the network (crop sizes, e.g. GL-MAE's local views, whose ids
    are not the spec's) are those of its scale on any machine. So MONAI Label's bundle trainer, which starts from the
    shipped ``models/model.pt``, trains that network further.

    Raises:
        ValueError: ``configs`` (the ``--settings``) already set one of those ids to another value.
    """
    name = "configs/train.json"
    config = json.loads(configs[name]) if name in configs else read_json(bundle / name)
    original = read_json(bundle / name)
    saved = {key: value for key, value in spec.settings.items() if key in config}
    contradictions = [f"{key}: --settings {config[key]!r}, weights {value!r}" for key, value in saved.items()
                      if config[key] != original[key] and config[key] != value]
    if contradictions:
        raise ValueError("--settings contradict the network the weights carry: " + "; ".join(contradictions))
    if "cpu_demo_scale" in config and config["cpu_demo_scale"] == original["cpu_demo_scale"]:
        builds_it = [scale for scale in (False, True) if plain_values(spec.arguments) == plain_values(
            train_json_spec(bundle, {**saved, "cpu_demo_scale": scale}).arguments)]
        config.update({"cpu_demo_scale": builds_it[0]} if len(builds_it) == 1 else {})
    config.update({**saved, "network_spec": {"_target_": spec.factory, **spec.arguments}})
    return {name: (json.dumps(config, indent=4) + "\n").encode()}


def bundle_problems(bundle: Path, releases: Path | None = None) -> list[str]:
    """What stops ``bundle`` from being packaged: failed ``tools.verify`` checks and release record conflicts."""
    problems = [f"{r.check}: {r.detail}" for r in (check_files(bundle), check_metadata(bundle), check_configs(bundle))
                if r.status == "FAIL"]
    if not problems:
        version = read_json(bundle / "configs" / "metadata.json")["version"]
        problems += release_problems(bundle, version, releases)
    return problems


def update_model_info(dist: Path, key: str, checksum: str, source: str) -> None:
    """Set ``key``'s entry of ``<dist>/model_info.json`` to ``{"checksum": checksum, "source": source}``, keeping the
    others: the model zoo's format, ``checksum`` being the zip's :func:`model_info_checksum` (SHA-1)."""
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
    settings: Mapping | None = None,
) -> Path:
    """Write the artifact ``<dist>/<name>_v<version>.zip`` of ``bundle`` and record it; returns its path.

    Args:
        bundle: the bundle folder, e.g. ``bundles/btcv_segmentation``.
        weights: a checkpoint shipped as ``models/model.pt`` (e.g. the bundle's own ``models/model.pt``).
        dist: output folder, default ``<repository>/dist``.
        source_url: where the artifact will be published (a folder URL); default the zip's ``file://`` URI.
        releases: the release record to check and update (:data:`tools.releases.RELEASES_FILE`).
        settings: top-level config ids written into the artifact's configs (module docstring); with ``weights``
            that carry no network spec the default is :data:`WEIGHTS_SETTINGS`.

    Raises:
        ValueError: the bundle fails a check, a setting is no config id, the weights do not fit the network, or an
            artifact of the same version with other bytes exists.
    """
    bundle_dir = Path(bundle).resolve()
    problems = bundle_problems(bundle_dir, releases)
    if problems:
        raise ValueError(f"cannot package {bundle_dir}: " + "; ".join(problems))
    weights_path = Path(weights).resolve() if weights else None
    checkpoint = load_weights(weights_path) if weights_path is not None else None
    spec = saved_spec(checkpoint, weights_path) if checkpoint is not None else None
    plain_weights = checkpoint is not None and spec is None
    settings = dict(WEIGHTS_SETTINGS if plain_weights and settings is None else settings or {})
    contents = configs_with(bundle_dir, settings)
    if checkpoint is not None:
        if spec is None:
            spec = train_json_spec(bundle_dir, settings)
            described = f"the network of train.json with settings {settings}"
        else:
            described = f"the network they carry ({spec.arguments})"
        problem = fit_problem(spec.build(), checkpoint, weights_path, described)
        if problem:
            raise ValueError(problem)
        contents.update({**metadata_with(bundle_dir, spec), **train_config_with_spec(bundle_dir, spec, contents)})
        contents["models/model.pt"] = with_spec(checkpoint, spec) if plain_weights else weights_path.read_bytes()
    version = read_json(bundle_dir / "configs" / "metadata.json")["version"]
    key = f"{bundle_dir.name}_v{version}"
    dist_dir = Path(dist).resolve() if dist else DEFAULT_DIST
    dist_dir.mkdir(parents=True, exist_ok=True)
    artifact = dist_dir / f"{key}.zip"

    staged = artifact.with_suffix(".zip.partial")
    write_reproducible_zip(artifact_entries(bundle_dir, contents), staged)
    checksum = model_info_checksum(staged)
    if artifact.is_file() and model_info_checksum(artifact) != checksum:
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


def main(bundle: str, weights: str | None = None, dist: str | None = None, source_url: str | None = None,
         settings: dict | None = None) -> None:
    """``python -m tools.package bundles/<name> [--weights PATH] [--dist DIR] [--source_url URL] [--settings DICT]``."""
    try:
        artifact = package(bundle, weights=weights, dist=dist, source_url=source_url, settings=settings)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"tools.package: {e}")
    print(f"{artifact} ({artifact.stat().st_size / 1e6:.1f} MB, sha256 {file_hash(artifact, 'sha256')})")


if __name__ == "__main__":
    fire.Fire(main)
