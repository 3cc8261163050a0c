"""Check bundle folders before they are committed or packaged.

``python -m tools.verify``                      every bundle folder under ``bundles/``
``python -m tools.verify bundles/a bundles/b``  only the folders given

Five checks per bundle, one report line each (``OK``, ``FAIL: reason`` or ``SKIP: reason``):

``files``       the required files are present.
``metadata``    ``configs/metadata.json`` validates against the MONAI bundle metadata schema named in its
                ``"schema"`` field (vendored in ``tools/schema/``, so this works offline), its ``version`` is
                semantic (X.Y.Z) and is a key of ``changelog``, and it is consistent with the last packaged
                version in ``bundles/releases.json`` (:mod:`tools.releases`): not older, and files changed since
                then only under a new version.
``configs``     every ``configs/*.json`` is JSON and a MONAI config whose ``@references`` all exist. Override
                files are layered on their base as ``monai.bundle run --config_file "[base, override]"``
                does: on ``inference.json`` when their name contains "infer", otherwise on ``train.json``.
                Nothing is instantiated or evaluated.
``net_in_out``  ``monai.bundle.verify_net_in_out`` on CPU: ``inference.json``'s ``network_def`` takes the
                metadata's ``inputs#image`` at its declared shape and returns ``outputs#pred#num_channels``
                channels (a pre-training bundle's ``network_def`` is its encoder: image -> features). Skipped for
                bundles without an image -> pred network.
``properties``  MONAI's property checks, as ``monai.bundle.create_workflow`` and the model zoo's tests run them:
                ``train.json`` as a train workflow and, where the bundle has ``models/model.pt`` (an unpacked
                artifact), ``inference.json`` as an inference workflow (it needs weights), each initialised with
                ``--bundle_root`` the folder and its outputs in a temporary folder, then ``check_properties()``.

The exit code is 1 when any check failed, 0 otherwise.
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import fire
import jsonschema
from monai.bundle import ConfigParser, ConfigWorkflow, verify_net_in_out
from monai.bundle.reference_resolver import ReferenceResolver

from tools.environment import print_environment_report
from tools.releases import release_problems

BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"
SCHEMA_DIR = Path(__file__).resolve().parent / "schema"
REQUIRED_FILES = (
    "configs/metadata.json",
    "configs/train.json",
    "configs/inference.json",
    "configs/logging.conf",
    "docs/README.md",
    "LICENSE",
)
BASE_CONFIGS = ("train.json", "inference.json")
SEMVER = re.compile(r"^\d+\.\d+\.\d+$")
MAX_SCHEMA_ERRORS = 3


@dataclass(frozen=True)
class Result:
    """The outcome of one check on one bundle: ``status`` is "OK", "FAIL" or "SKIP"."""

    check: str
    status: str
    detail: str = ""

    def line(self, bundle: str, width: int) -> str:
        """The report line, e.g. ``tiny  metadata    FAIL: version '0.2.0' is not a key of changelog``."""
        detail = f" ({self.detail})" if self.status == "OK" else f": {self.detail}"
        return f"{bundle:<{width}}  {self.check:<10}  {self.status}{detail if self.detail else ''}"


def outcome(check: str, problems: list[str], detail: str = "") -> Result:
    """``FAIL`` with the problems joined by "; ", or ``OK`` with ``detail`` when there are none."""
    return Result(check, "FAIL", "; ".join(problems)) if problems else Result(check, "OK", detail)


def read_json(path: Path) -> dict:
    """The JSON object in ``path``; ``ValueError`` naming the file if it is missing, not JSON or not an object."""
    if not path.is_file():
        raise ValueError(f"{path.name} is missing")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path.name}: not JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    if not isinstance(content, dict):
        raise ValueError(f"{path.name}: not a JSON object")
    return content


def check_files(bundle: Path) -> Result:
    """Every file of ``REQUIRED_FILES`` exists in the bundle folder."""
    missing = [name for name in REQUIRED_FILES if not (bundle / name).is_file()]
    return outcome("files", [f"missing {', '.join(missing)}"] if missing else [])


def load_schema(url: str) -> dict:
    """The vendored schema whose file name ends the metadata's ``"schema"`` URL."""
    path = SCHEMA_DIR / url.rsplit("/", 1)[-1]
    if not url.endswith(".json") or not path.is_file():
        vendored = ", ".join(sorted(p.name for p in SCHEMA_DIR.glob("*.json")))
        raise ValueError(f'"schema" {url!r} is not vendored in tools/schema/ (have: {vendored})')
    return read_json(path)


def schema_problems(metadata: dict) -> list[str]:
    """Violations of the metadata schema, as ``path: message``, the first ``MAX_SCHEMA_ERRORS`` of them."""
    schema = load_schema(str(metadata.get("schema", "")))
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(metadata), key=lambda e: list(e.absolute_path))
    problems = [f"{'#'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]
    if len(problems) > MAX_SCHEMA_ERRORS:
        problems = problems[:MAX_SCHEMA_ERRORS] + [f"and {len(problems) - MAX_SCHEMA_ERRORS} more schema errors"]
    return problems


def version_problems(metadata: dict) -> list[str]:
    """``version`` must be X.Y.Z and be a key of ``changelog``."""
    version, changelog = metadata.get("version"), metadata.get("changelog")
    problems = [] if SEMVER.match(str(version)) else [f"version {version!r} is not semantic (X.Y.Z)"]
    if not isinstance(changelog, dict) or version not in changelog:
        problems.append(f"version {version!r} is not a key of changelog")
    return problems


def check_metadata(bundle: Path) -> Result:
    """``configs/metadata.json`` validates against its vendored schema, its version is in its changelog, and the
    bundle did not change since that version was packaged."""
    try:
        metadata = read_json(bundle / "configs" / "metadata.json")
        problems = schema_problems(metadata) + version_problems(metadata)
        if not problems:
            problems = release_problems(bundle, metadata["version"])
    except ValueError as e:
        return Result("metadata", "FAIL", str(e))
    return outcome("metadata", problems, f"{metadata['schema'].rsplit('/', 1)[-1]}, version {metadata['version']}")


def dangling_references(files: list[Path], metadata: Path) -> set[tuple[str, str]]:
    """``(item id, missing id)`` for every ``@reference`` of the layered ``files`` that names no config item.

    The config is parsed as ``monai.bundle run`` parses it (files merged in order, metadata under ``_meta_``,
    macros and relative ids resolved), without instantiating or evaluating anything.
    """
    parser = ConfigParser()
    if metadata.is_file():
        parser.read_meta(str(metadata))
    parser.read_config([str(f) for f in files])
    parser.parse()
    items = parser.ref_resolver.items
    return {
        (item_id, ref)
        for item_id, item in items.items()
        if isinstance(item.get_config(), str)
        for ref in ReferenceResolver.match_refs_pattern(item.get_config())
        if ref not in items
    }


def base_of(config: Path) -> Path | None:
    """The config an override file is layered on; ``None`` for ``train.json`` and ``inference.json``."""
    if config.name in BASE_CONFIGS:
        return None
    return config.with_name("inference.json" if "infer" in config.stem else "train.json")


def config_problems(config: Path, metadata: Path) -> list[str]:
    """Why ``config`` does not parse as a MONAI config, alone or layered on its base; a reference already
    broken in the base is reported for the base only."""
    base = base_of(config)
    layers = [config] if base is None else [base, config]
    try:
        for layer in layers:
            read_json(layer)
    except ValueError as e:
        return [str(e)]
    try:
        dangling = dangling_references(layers, metadata)
        if base is not None:
            dangling -= dangling_references([base], metadata)
    except Exception as e:  # any error of ConfigParser on the bundle's content is a finding
        return [f"{config.name}: {type(e).__name__}: {e}"]
    return [
        f"{config.name}: {item.replace('::', '#')} refers to missing @{ref.replace('::', '#')}"
        for item, ref in sorted(dangling)
    ]


def zoo_formatted(path: Path) -> bool:
    """Whether the JSON file ``path`` is formatted as the model zoo's pre-commit hook formats it
    (``pretty-format-json --autofix --no-sort-keys --indent=4``: four-space indents, keys in their order, ASCII
    escapes, a final newline); a file that is no JSON object counts as formatted (:func:`config_problems` reports
    it)."""
    text = path.read_text()
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        return True
    return not isinstance(document, dict) or text == json.dumps(document, indent=4, separators=(",", ": ")) + "\n"


def check_configs(bundle: Path) -> Result:
    """Every ``configs/*.json`` but metadata parses and its references resolve (``config_problems``); a problem of
    a base config that its overrides share is reported once. Every ``configs/*.json`` is formatted as the model
    zoo's pre-commit hook formats it (:func:`zoo_formatted`)."""
    configs = [p for p in (bundle / "configs").glob("*.json") if p.name != "metadata.json"]
    configs.sort(key=lambda p: (base_of(p) is not None, p.name))  # bases first
    if not configs:
        return Result("configs", "FAIL", "no configs/*.json")
    metadata = bundle / "configs" / "metadata.json"
    problems = list(dict.fromkeys(problem for config in configs for problem in config_problems(config, metadata)))
    problems += [f"{path.name} is not formatted as the zoo's pretty-format-json hook formats it"
                 for path in sorted((bundle / "configs").glob("*.json")) if not zoo_formatted(path)]
    names = [c.name if base_of(c) is None else f"{base_of(c).name}+{c.name}" for c in configs]
    return outcome("configs", problems, ", ".join(names))


def image_pred_format(metadata: Path) -> dict | None:
    """The metadata's ``network_data_format`` if it declares an ``image`` input and a ``pred`` output."""
    data_format = read_json(metadata).get("network_data_format", {})
    has_io = "image" in data_format.get("inputs", {}) and "pred" in data_format.get("outputs", {})
    return data_format if has_io else None


def run_verify_net_in_out(metadata: Path, inference: Path) -> None:
    """``monai.bundle.verify_net_in_out`` of ``network_def`` on CPU with ``inputs#image`` at its declared shape."""
    monai_logger = logging.getLogger("monai.bundle.scripts")
    level = monai_logger.level
    monai_logger.setLevel(logging.WARNING)  # verify_net_in_out logs its arguments at INFO
    try:
        verify_net_in_out(
            net_id="network_def",
            meta_file=str(metadata),
            config_file=str(inference),
            device="cpu",
        )
    finally:
        monai_logger.setLevel(level)


def check_net_in_out(bundle: Path) -> Result:
    """``inference.json#network_def`` maps the metadata's ``inputs#image``, at its declared shape, to
    ``outputs#pred#num_channels`` channels of the declared dtype (what the model zoo's ``verify_net_in_out`` checks;
    ``network_def`` without weights is built at the papers' sizes)."""
    metadata, inference = bundle / "configs" / "metadata.json", bundle / "configs" / "inference.json"
    if not (metadata.is_file() and inference.is_file()):
        return Result("net_in_out", "FAIL", "needs configs/metadata.json and configs/inference.json")
    try:
        data_format = image_pred_format(metadata)
        if data_format is None:
            return Result("net_in_out", "SKIP", "no image->pred network")
        image, pred = data_format["inputs"]["image"], data_format["outputs"]["pred"]
        run_verify_net_in_out(metadata, inference)
    except Exception as e:  # any error building or running the network is a finding
        return Result("net_in_out", "FAIL", f"{type(e).__name__}: {e}")
    size = "x".join(map(str, [image["num_channels"], *image["spatial_shape"]]))
    return Result("net_in_out", "OK", f"network_def: {size} -> {pred['num_channels']} channels")


def property_problems(bundle: Path, workflow_type: str, scratch: Path) -> list[str]:
    """``check_properties()`` of ``configs/<workflow_type>.json`` as a ``workflow_type`` workflow of ``bundle``:
    a required property it lacks, or the optional ones it refers to under other ids (MONAI's ``TrainProperties`` /
    ``InferProperties``). Its checkpoints and outputs go to ``scratch``."""
    configs = bundle / "configs"
    workflow = ConfigWorkflow(
        config_file=str(configs / f"{workflow_type}.json"),
        meta_file=str(configs / "metadata.json"),
        logging_file=False,
        workflow_type=workflow_type,
        bundle_root=str(bundle),
        ckpt_dir=str(scratch / "models"),
        output_dir=str(scratch / workflow_type),
    )
    workflow.initialize()
    try:
        misplaced = workflow.check_properties() or []
    except KeyError as e:  # MONAI raises on the first missing required property
        return [f"{workflow_type}.json: {e.args[0]}"]
    return [f"{workflow_type}.json refers to optional property {name} under another id" for name in misplaced]


def check_properties(bundle: Path) -> Result:
    """MONAI's property checks of the train workflow and, given ``models/model.pt``, the inference workflow."""
    workflows = ["train", "inference"] if (bundle / "models" / "model.pt").is_file() else ["train"]
    problems = []
    try:  # the workflows' progress bars and prints are not the report's
        with tempfile.TemporaryDirectory() as scratch, redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            for workflow_type in workflows:
                problems += property_problems(bundle, workflow_type, Path(scratch))
    except Exception as e:  # any error building the workflow is a finding
        return Result("properties", "FAIL", f"{type(e).__name__}: {e}")
    unchecked = "" if "inference" in workflows else "; inference: no models/model.pt"
    return outcome("properties", problems, ", ".join(workflows) + unchecked)


CHECKS = (check_files, check_metadata, check_configs, check_net_in_out, check_properties)


def verify_bundle(bundle: Path) -> list[Result]:
    """All checks of one bundle folder."""
    return [check(bundle) for check in CHECKS]


def bundle_dirs(bundles: tuple[str, ...]) -> list[Path]:
    """The folders given, or every folder under ``BUNDLES_DIR`` when none is given."""
    if bundles:
        return [Path(b) for b in bundles]
    return sorted(p for p in BUNDLES_DIR.glob("*") if p.is_dir() and not p.name.startswith((".", "_")))


def run(*bundles: str) -> int:
    """Verify bundle folders, print one line per bundle per check; the exit code: 1 if anything failed."""
    dirs = bundle_dirs(bundles)
    if not dirs:
        print(f"no bundle folders under {BUNDLES_DIR}")
        return 1
    width = max(len(d.name) for d in dirs)
    failed = False
    for bundle in dirs:
        if not bundle.is_dir():
            print(f"{bundle.name:<{width}}  {'bundle':<10}  FAIL: {bundle} is not a folder")
            failed = True
            continue
        for result in verify_bundle(bundle):
            print(result.line(bundle.name, width), flush=True)
            failed |= result.status == "FAIL"
    return int(failed)


def main(*bundles: str) -> None:
    """``python -m tools.verify [bundle_dir ...]``: verify the bundles and exit 1 if any check failed."""
    print_environment_report()
    sys.exit(run(*bundles))


if __name__ == "__main__":
    fire.Fire(main)
