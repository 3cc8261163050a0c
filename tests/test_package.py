"""``tools.package``: reproducible, self-contained bundle artifacts, ``model_info.json``, the release record that
``tools.verify`` checks; ``tools.check_artifact``: an unpacked artifact runs in a fresh environment on its own;
``tools.monailabel_check``: MONAI Label serves a packaged bundle."""

import hashlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from bundle_weights import network_weights
from monai.apps.utils import check_hash

from common.networks.spec import SPEC_KEY
from tools import package as tools_package
from tools.check_artifact import check_artifact, pinned_requirements
from tools.monailabel_check import check_monailabel
from tools.package import package
from tools.releases import fingerprint, read_releases, release_problems
from tools.verify import check_metadata

REPO_ROOT = Path(__file__).resolve().parents[1]


def copy_bundle(name: str, destination: Path) -> Path:
    """A copy of ``bundles/<name>`` without its outputs (``models/``, ``eval/``), named ``name`` too."""
    source, target = REPO_ROOT / "bundles" / name, destination / name
    for part in ("configs", "docs"):
        shutil.copytree(source / part, target / part)
    shutil.copy(source / "LICENSE", target / "LICENSE")
    return target


def set_version(bundle: Path, version: str) -> None:
    path = bundle / "configs" / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["version"] = version
    metadata["changelog"][version] = "a test change"
    path.write_text(json.dumps(metadata, indent=4) + "\n")


@pytest.fixture
def bundle(tmp_path):
    return copy_bundle("ct_slice_classification", tmp_path / "src")


@pytest.fixture
def weights(bundle, tmp_path):
    """Weights as the bundle's training saves them, with their network spec."""
    return network_weights(bundle, tmp_path / "weights.pt", {})


def test_artifact_layout_and_model_info(bundle, weights, tmp_path):
    releases = tmp_path / "releases.json"
    artifact = package(str(bundle), weights=str(weights), dist=str(tmp_path / "dist"), releases=releases)
    version = json.loads((bundle / "configs" / "metadata.json").read_text())["version"]
    assert artifact.name == f"ct_slice_classification_v{version}.zip"

    names = zipfile.ZipFile(artifact).namelist()
    assert {name.split("/", 1)[0] for name in names} == {"ct_slice_classification"}
    prefix = "ct_slice_classification/"
    expected = {prefix + "LICENSE", prefix + "docs/README.md", prefix + "models/model.pt",
                prefix + "common/__init__.py", prefix + "common/paths.py"}
    expected |= {prefix + "configs/" + p.name for p in (bundle / "configs").iterdir()}
    assert expected <= set(names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    with zipfile.ZipFile(artifact) as archive:
        assert archive.read(prefix + "models/model.pt") == weights.read_bytes()
        assert archive.read(prefix + "docs/README.md") == (bundle / "docs" / "README.md").read_bytes()
        # the weights carry their network: inference.json reads it from them, train.json trains it further
        assert archive.read(prefix + "configs/inference.json") == (bundle / "configs" / "inference.json").read_bytes()
        train = json.loads(archive.read(prefix + "configs/train.json"))
        saved = torch.load(weights, weights_only=True)["network_spec"]
        assert train["network_spec"] == json.loads(json.dumps({"_target_": saved["factory"], **saved["arguments"]}))
        assert train["intensity"] == saved["arguments"]["intensity"]

    info = json.loads((tmp_path / "dist" / "model_info.json").read_text())
    entry = info[f"ct_slice_classification_v{version}"]
    # the model zoo's format: the zip's sha1 (its ci/update_model_info.py), no other fields
    assert entry == {"checksum": hashlib.sha1(artifact.read_bytes()).hexdigest(), "source": artifact.as_uri()}
    assert check_hash(str(artifact), entry["checksum"], hash_type="sha1")
    assert read_releases(releases) == {"ct_slice_classification": {"version": version, "fingerprint": fingerprint(bundle)}}


def test_same_inputs_give_the_same_bytes(bundle, weights, tmp_path):
    first = package(str(bundle), weights=str(weights), dist=str(tmp_path / "a"), releases=tmp_path / "r.json")
    (bundle / "docs" / "README.md").touch()  # a new modification time changes nothing
    second = package(str(bundle), weights=str(weights), dist=str(tmp_path / "b"), releases=tmp_path / "r.json",
                     source_url="https://example.org/releases/")
    assert first.read_bytes() == second.read_bytes()
    info = json.loads((tmp_path / "b" / "model_info.json").read_text())
    assert info[second.stem]["source"] == f"https://example.org/releases/{second.name}"


def bundle_version(bundle: Path) -> str:
    return json.loads((bundle / "configs" / "metadata.json").read_text())["version"]


def test_changed_files_need_a_version_bump(bundle, tmp_path):
    releases = tmp_path / "releases.json"
    dist = tmp_path / "dist"
    package(str(bundle), dist=str(dist), releases=releases)
    packaged = bundle_version(bundle)
    assert release_problems(bundle, packaged, releases) == []

    readme = bundle / "docs" / "README.md"
    readme.write_text(readme.read_text() + "\nA changed paragraph.\n")
    problems = release_problems(bundle, packaged, releases)
    assert problems and "bump version" in problems[0]
    with pytest.raises(ValueError, match="bump version"):
        package(str(bundle), dist=str(dist), releases=releases)

    major, minor, patch = packaged.split(".")
    bumped = f"{major}.{minor}.{int(patch) + 1}"
    set_version(bundle, bumped)
    assert release_problems(bundle, bumped, releases) == []
    assert package(str(bundle), dist=str(dist), releases=releases).name == f"ct_slice_classification_v{bumped}.zip"
    assert f"older than the packaged {bumped}" in release_problems(bundle, packaged, releases)[0]


def test_verify_reads_the_repository_release_record(tmp_path, monkeypatch):
    bundle = copy_bundle("btcv_segmentation", tmp_path)
    version = bundle_version(bundle)
    record = tmp_path / "releases.json"
    record.write_text(json.dumps({"btcv_segmentation": {"version": version, "fingerprint": "0" * 64}}))
    monkeypatch.setattr("tools.releases.RELEASES_FILE", record)
    result = check_metadata(bundle)
    assert result.status == "FAIL" and f"files changed since version {version} was packaged" in result.detail


def test_refuses_to_overwrite_an_artifact_with_other_bytes(bundle, weights, tmp_path):
    dist, releases = tmp_path / "dist", tmp_path / "releases.json"
    package(str(bundle), dist=str(dist), releases=releases)
    with pytest.raises(ValueError, match="exists with other content"):
        package(str(bundle), weights=str(weights), dist=str(dist), releases=releases)
    assert not list(dist.glob("*.partial"))


def test_refuses_bad_bundles_and_weights(bundle, tmp_path):
    not_weights = tmp_path / "notes.pt"
    not_weights.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="does not load as a checkpoint"):
        package(str(bundle), weights=str(not_weights), dist=str(tmp_path / "d"), releases=tmp_path / "r.json")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        package(str(bundle), weights=str(tmp_path / "missing.pt"), dist=str(tmp_path / "d"), releases=tmp_path / "r.json")
    (bundle / "LICENSE").unlink()
    with pytest.raises(ValueError, match="files: missing LICENSE"):
        package(str(bundle), dist=str(tmp_path / "d"), releases=tmp_path / "r.json")


def test_settings_go_into_every_config_that_defines_them(tmp_path):
    bundle = copy_bundle("btcv_segmentation", tmp_path / "src")
    settings = {"arch": "mim", "cpu_demo_scale": True}
    artifact = package(str(bundle), dist=str(tmp_path / "dist"), releases=tmp_path / "r.json", settings=settings)
    with zipfile.ZipFile(artifact) as archive:
        for path in sorted((bundle / "configs").glob("*.json")):
            config = json.loads(archive.read(f"btcv_segmentation/configs/{path.name}"))
            original = json.loads(path.read_text())
            assert config == {**original, **{k: v for k, v in settings.items() if k in original}}, path.name
    with pytest.raises(ValueError, match=r"settings \['no_such_id'\] are not top-level ids"):
        package(str(bundle), dist=str(tmp_path / "dist2"), releases=tmp_path / "r.json", settings={"no_such_id": 1})


def test_weights_carrying_their_network_need_no_settings_and_describe_the_artifact(tmp_path):
    """A fine-tuned checkpoint (here CPU demo sizes, ``arch`` mim) packages with no setting: inference.json is left as
    it is, train.json trains that network further (MONAI Label's trainer starts from it), the metadata gets its
    input channels and labels; a setting that contradicts it is refused."""
    bundle = copy_bundle("btcv_segmentation", tmp_path / "src")
    weights = network_weights(bundle, tmp_path / "demo.pt", {"cpu_demo_scale": True, "arch": "mim"})
    artifact = package(str(bundle), weights=str(weights), dist=str(tmp_path / "dist"), releases=tmp_path / "r.json")
    with zipfile.ZipFile(artifact) as archive:
        inference = json.loads(archive.read("btcv_segmentation/configs/inference.json"))
        metadata = json.loads(archive.read("btcv_segmentation/configs/metadata.json"))
    assert inference == json.loads((bundle / "configs" / "inference.json").read_text())
    with zipfile.ZipFile(artifact) as archive:
        train = json.loads(archive.read("btcv_segmentation/configs/train.json"))
    assert train["arch"] == "mim" and train["network_spec"]["encoder_config"]["widths"] == [16, 32, 64, 96]
    with pytest.raises(ValueError, match=r"--settings contradict .*arch: --settings 'unetr', weights 'mim'"):
        package(str(bundle), weights=str(weights), dist=str(tmp_path / "dist2"), releases=tmp_path / "r2.json",
                settings={"arch": "unetr"})
    labels = torch.load(weights, weights_only=True)[SPEC_KEY]["arguments"]["channel_def"]
    assert metadata["network_data_format"]["outputs"]["pred"]["channel_def"] == labels
    assert metadata["network_data_format"]["outputs"]["pred"]["num_channels"] == 14
    assert metadata["network_data_format"]["inputs"]["image"]["num_channels"] == 1


def test_plain_weights_get_the_network_of_the_settings(tmp_path):
    """A plain state dict (a pre-training method's, CPU demo sizes) is refused under the default settings (the
    papers' sizes) and packaged with ``cpu_demo_scale`` set to what it was trained with: the shipped ``model.pt``
    carries the network spec of ``train.json`` under those settings, as training would have saved it."""
    bundle = copy_bundle("mim_pretrain", tmp_path / "src")
    demo = {"cpu_demo_scale": True}
    trained = torch.load(network_weights(bundle, tmp_path / "demo.pt", demo), weights_only=True)
    weights = tmp_path / "plain.pt"
    torch.save(trained["model"], weights)
    with pytest.raises(ValueError, match="do not fit the network of train.json with settings {'cpu_demo_scale': Fals"):
        package(str(bundle), weights=str(weights), dist=str(tmp_path / "dist"), releases=tmp_path / "r.json")
    artifact = package(str(bundle), weights=str(weights), dist=str(tmp_path / "dist"), releases=tmp_path / "r.json",
                       settings=demo)
    with zipfile.ZipFile(artifact) as archive:
        shipped = torch.load(io.BytesIO(archive.read("mim_pretrain/models/model.pt")), weights_only=True)
        train = json.loads(archive.read("mim_pretrain/configs/train.json"))
    assert shipped[SPEC_KEY] == trained[SPEC_KEY] and shipped["model"].keys() == trained["model"].keys()
    assert train["cpu_demo_scale"] is True and train["network_spec"]["method"] == "MiM"


def test_the_artifact_trains_at_the_scale_of_its_weights(tmp_path):
    """GL-MAE weights of a CPU demo run: the spec fixes the ViT and its 48^3 grid, whose config ids (``vit_config``,
    ``local_size``) are not the spec's; the artifact's train.json gets ``cpu_demo_scale`` true, the one scale that
    builds that method, so its crops fit it on any machine."""
    bundle = copy_bundle("glmae_pretrain", tmp_path / "src")
    weights = network_weights(bundle, tmp_path / "demo.pt", {"cpu_demo_scale": True})
    artifact = package(str(bundle), weights=str(weights), dist=str(tmp_path / "dist"), releases=tmp_path / "r.json")
    with zipfile.ZipFile(artifact) as archive:
        train = json.loads(archive.read("glmae_pretrain/configs/train.json"))
    assert train["cpu_demo_scale"] is True and train["network_spec"]["method"] == "GLMAE"


def test_cli_exits_with_the_reason(bundle, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("tools.releases.RELEASES_FILE", tmp_path / "releases.json")
    (bundle / "LICENSE").unlink()
    with pytest.raises(SystemExit, match="cannot package .*missing LICENSE"):
        tools_package.main(str(bundle), dist=str(tmp_path / "dist"))


def test_artifact_environment_pins_the_metadata_versions():
    metadata = json.loads((REPO_ROOT / "bundles" / "btcv_segmentation" / "configs" / "metadata.json").read_text())
    pins = pinned_requirements(metadata)
    assert f"torch=={metadata['pytorch_version']}" in pins and f"monai=={metadata['monai_version']}" in pins
    assert all(f"{name}=={version}" in pins for name, version in metadata["required_packages_version"].items())


@pytest.mark.integration
@pytest.mark.parametrize("name", ["btcv_segmentation", "mim_pretrain"])
def test_unpacked_artifact_runs_on_its_own(name, tmp_path):
    """The issue's check, for one downstream and one pre-training bundle: a fresh environment with only the
    metadata's pins, ``monai.bundle download --url file://``, inference with the shipped weights, smoke training."""
    bundle = copy_bundle(name, tmp_path / "src")
    demo = {"cpu_demo_scale": True}
    downstream = name == "btcv_segmentation"
    weights = network_weights(bundle, tmp_path / "model.pt", demo, "smoke.json") if downstream else None
    artifact = package(str(bundle), weights=weights and str(weights), dist=str(tmp_path / "dist"),
                       releases=tmp_path / "releases.json", settings=demo if downstream else None)
    steps = check_artifact(str(artifact), work_dir=str(tmp_path / "unpacked"))

    unpacked = tmp_path / "unpacked" / name
    assert any(step.startswith("import common -> " + str(unpacked / "common")) for step in steps)
    assert (unpacked / "models" / "model.pt").is_file()
    if downstream:
        assert len(list((unpacked / "eval" / "predictions").rglob("*_seg.nii.gz"))) > 0
        assert list((unpacked / "models" / "previous").rglob("model.pt"))  # the shipped weights, archived by training


@pytest.mark.integration
def test_monailabel_serves_the_packaged_bundle(tmp_path, shared_data):
    """MONAI Label's ``monaibundle`` app on this CPU with the packaged ``btcv_segmentation``: untrained weights of the
    papers' network (Swin UNETR, feature size 48, 96^3 windows: ``cpu_demo_scale`` false, as a GPU run saves them;
    4 mm voxels to keep it quick), packaged with no setting. ``/info/`` lists the organs of ``channel_def``,
    ``/infer`` returns a label map of a real CT, ``/train/`` trains that network on it for one epoch (one step)."""
    bundle = copy_bundle("btcv_segmentation", tmp_path / "src")
    weights = network_weights(bundle, tmp_path / "model.pt", {"cpu_demo_scale": False, "pixdim": [4.0, 4.0, 4.0]})
    assert torch.load(weights, weights_only=True)[SPEC_KEY]["arguments"]["roi_size"] == [96, 96, 96]
    artifact = package(str(bundle), weights=str(weights), dist=str(tmp_path / "dist"), releases=tmp_path / "r.json")

    image = shared_data / "totalsegmentator" / "example_ct_sm.nii.gz"
    report = check_monailabel(str(artifact), image=str(image), work_dir=str(tmp_path / "work"), train_epochs=1)

    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    channel_def = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert report["labels"] == {name.lower(): int(index) for index, name in channel_def.items() if index != "0"}
    assert (tmp_path / "work" / "label.nii.gz").is_file()  # shape and labels checked by check_monailabel
    assert report["train"]["status"] == "DONE"  # and the final training state written, checked by check_monailabel
