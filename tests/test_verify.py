"""``python -m tools.verify`` on tiny synthetic bundles (one per failure type) and on the real bundles."""

import json
from pathlib import Path

import fire
import pytest

from tools import verify

SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"


def tensor(num_channels: int, channel_def: dict) -> dict:
    """A ``network_data_format`` entry: a float32 3D tensor of 16^3 with ``num_channels`` channels."""
    return {
        "type": "image",
        "format": "magnitude",
        "modality": "CT",
        "num_channels": num_channels,
        "spatial_shape": [16, 16, 16],
        "dtype": "float32",
        "value_range": [0, 1],
        "is_patch_data": True,
        "channel_def": channel_def,
    }


METADATA = {
    "schema": SCHEMA_URL,
    "version": "0.1.0",
    "changelog": {"0.1.0": "initial version"},
    "monai_version": "1.6.1",
    "pytorch_version": "2.13.0",
    "numpy_version": "2.4.6",
    "required_packages_version": {},
    "task": "tiny test segmentation",
    "description": "a synthetic bundle for tests/test_verify.py",
    "authors": "tests",
    "copyright": "tests",
    "network_data_format": {
        "inputs": {"image": tensor(1, {"0": "image"})},
        "outputs": {"pred": tensor(2, {"0": "background", "1": "organ"})},
    },
}
NETWORK_DEF = {
    "_target_": "monai.networks.nets.UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": "@num_classes",
    "channels": [4, 8],
    "strides": [2],
}
# MONAI's required workflow properties (monai.bundle.properties), on an empty data set
WORKFLOW = {
    "imports": ["$import torch"],
    "bundle_root": ".",
    "device": "$torch.device('cpu')",
    "dataset_dir": "data",
    "num_classes": "$len(@_meta_#network_data_format#outputs#pred#channel_def)",
    "network_def": NETWORK_DEF,
    "network": "$@network_def.to(@device)",
}
TRAIN = {
    **WORKFLOW,
    "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network.parameters()", "lr": 1e-4},
    "max_epochs": 2,
    "train": {
        "dataset": {"_target_": "Dataset", "data": []},
        "inferer": {"_target_": "SimpleInferer"},
        "trainer": {"_target_": "SupervisedTrainer", "device": "@device", "max_epochs": "@max_epochs",
                    "train_data_loader": "$torch.utils.data.DataLoader(@train#dataset)", "network": "@network",
                    "optimizer": "@optimizer", "loss_function": "$torch.nn.MSELoss()", "inferer": "@train#inferer"},
    },
    "run": ["$print(@max_epochs)"],
}
INFERENCE = {
    **WORKFLOW,
    "dataset": {"_target_": "Dataset", "data": []},
    "inferer": {"_target_": "SimpleInferer"},
    "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "network": "@network",
                  "val_data_loader": "$torch.utils.data.DataLoader(@dataset)", "inferer": "@inferer"},
    "run": ["$@evaluator.run()"],
}
EVALUATE = {"max_epochs": 1, "run": ["$print(@network)"]}
LOGGING_CONF = "[loggers]\nkeys=root\n[handlers]\nkeys=console\n[formatters]\nkeys=plain\n"


def write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=4) + "\n")


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A complete, valid tiny bundle (a 2-level UNet, 16^3 input) in ``tmp_path/tiny``."""
    root = tmp_path / "tiny"
    configs = root / "configs"
    write_json(configs / "metadata.json", METADATA)
    write_json(configs / "train.json", TRAIN)
    write_json(configs / "inference.json", INFERENCE)
    write_json(configs / "evaluate.json", EVALUATE)
    (configs / "logging.conf").write_text(LOGGING_CONF)
    (root / "docs").mkdir()
    (root / "docs" / "README.md").write_text("# tiny\n")
    (root / "LICENSE").write_text("Apache-2.0\n")
    return root


def edit_json(path: Path, **changes) -> None:
    """Set top-level keys of a JSON file."""
    write_json(path, {**json.loads(path.read_text()), **changes})


def report(bundle: Path, capsys: pytest.CaptureFixture) -> tuple[int, dict[str, str]]:
    """The exit code of ``python -m tools.verify <bundle>`` and its outcome per check."""
    code = verify.run(str(bundle))
    lines = capsys.readouterr().out.splitlines()
    return code, {line.split()[1]: line.split(maxsplit=2)[2] for line in lines}


def test_good_bundle_passes(bundle, capsys):
    code, outcomes = report(bundle, capsys)
    assert code == 0, outcomes
    assert set(outcomes) == {"files", "metadata", "configs", "net_in_out", "properties"}
    assert all(o.startswith("OK") for o in outcomes.values())
    assert "train.json+evaluate.json" in outcomes["configs"]
    assert "1x16x16x16 -> 2 channels" in outcomes["net_in_out"]


def test_cli_exit_code(bundle):
    with pytest.raises(SystemExit) as ok:
        fire.Fire(verify.main, command=[str(bundle)])
    (bundle / "LICENSE").unlink()
    with pytest.raises(SystemExit) as failed:
        fire.Fire(verify.main, command=[str(bundle)])
    assert (ok.value.code, failed.value.code) == (0, 1)


def test_missing_file(bundle, capsys):
    (bundle / "docs" / "README.md").unlink()
    code, outcomes = report(bundle, capsys)
    assert code == 1
    assert outcomes["files"] == "FAIL: missing docs/README.md"


def test_schema_violation(bundle, capsys):
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    del metadata["network_data_format"]["outputs"]["pred"]["dtype"]
    write_json(bundle / "configs" / "metadata.json", {**metadata, "authors": ["a", "b"]})
    code, outcomes = report(bundle, capsys)
    assert code == 1
    assert "authors: ['a', 'b'] is not of type 'string'" in outcomes["metadata"]
    assert "network_data_format#outputs#pred" in outcomes["metadata"]


def test_schema_not_vendored(bundle, capsys):
    edit_json(bundle / "configs" / "metadata.json", schema="https://example.org/meta_schema_19990101.json")
    code, outcomes = report(bundle, capsys)
    assert code == 1
    assert "is not vendored in tools/schema/" in outcomes["metadata"]


def test_version_not_in_changelog(bundle, capsys):
    edit_json(bundle / "configs" / "metadata.json", version="0.2.0")
    code, outcomes = report(bundle, capsys)
    assert code == 1
    assert outcomes["metadata"] == "FAIL: version '0.2.0' is not a key of changelog"


def test_version_not_semantic(bundle, capsys):
    edit_json(bundle / "configs" / "metadata.json", version="1.0", changelog={"1.0": "x"})
    code, outcomes = report(bundle, capsys)
    assert code == 1
    assert outcomes["metadata"] == "FAIL: version '1.0' is not semantic (X.Y.Z)"


def test_broken_json(bundle, capsys):
    (bundle / "configs" / "evaluate.json").write_text('{"max_epochs": 1,}')
    code, outcomes = report(bundle, capsys)
    assert code == 1
    assert outcomes["configs"].startswith("FAIL: evaluate.json: ")
    assert "not JSON" in outcomes["configs"] and "line 1" in outcomes["configs"]


def test_json_not_formatted_as_the_zoo_formats_it(bundle, capsys):
    (bundle / "configs" / "evaluate.json").write_text(json.dumps(EVALUATE, indent=2) + "\n")
    code, outcomes = report(bundle, capsys)
    assert code == 1
    assert outcomes["configs"] == "FAIL: evaluate.json is not formatted as the zoo's pretty-format-json hook formats it"


def test_broken_base_reported_once(bundle, capsys):
    (bundle / "configs" / "train.json").write_text("[1, 2]")
    code, outcomes = report(bundle, capsys)
    assert code == 1
    assert outcomes["configs"] == "FAIL: train.json: not a JSON object"


def test_config_parser_error(bundle, capsys):
    edit_json(bundle / "configs" / "inference.json", batch="@####max_epochs")
    code, outcomes = report(bundle, capsys)
    assert code == 1
    assert outcomes["configs"].startswith("FAIL: inference.json: ValueError: the relative id")


def test_dangling_reference(bundle, capsys):
    optimizer = {"_target_": "torch.optim.Adam", "params": "$@net.parameters()"}
    edit_json(bundle / "configs" / "train.json", optimizer=optimizer)
    edit_json(bundle / "configs" / "evaluate.json", checkpoint="@ckpt_path")
    code, outcomes = report(bundle, capsys)
    assert code == 1
    problems = outcomes["configs"].removeprefix("FAIL: ").split("; ")
    # the broken reference of train.json is reported once, not again for evaluate.json layered on it
    assert problems == [
        "train.json: optimizer#params refers to missing @net",
        "evaluate.json: checkpoint refers to missing @ckpt_path",
    ]


def test_relative_and_meta_references_resolve(bundle, capsys):
    edit_json(bundle / "configs" / "train.json", loader={"size": 2, "batch": "@#size"}, name="@_meta_#task")
    code, outcomes = report(bundle, capsys)
    assert code == 0, outcomes


def test_net_output_channels_mismatch(bundle, capsys):
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    metadata["network_data_format"]["outputs"]["pred"]["num_channels"] = 3
    write_json(bundle / "configs" / "metadata.json", metadata)
    code, outcomes = report(bundle, capsys)
    assert code == 1
    assert outcomes["net_in_out"].startswith("FAIL: ValueError: output channel number `2` doesn't match: `3`")


def test_no_image_pred_network_is_skipped(bundle, capsys):
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    metadata["network_data_format"]["outputs"] = {"reconstruction": metadata["network_data_format"]["outputs"]["pred"]}
    write_json(bundle / "configs" / "metadata.json", metadata)
    edit_json(bundle / "configs" / "train.json", num_classes=2)
    edit_json(bundle / "configs" / "inference.json", num_classes=2)
    code, outcomes = report(bundle, capsys)
    assert code == 0, outcomes
    assert outcomes["net_in_out"] == "SKIP: no image->pred network"


def test_net_in_out_at_the_declared_shape(bundle, capsys):
    """A network that takes only its declared size (a 2D UNETR on 48^2)."""
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    metadata["network_data_format"]["inputs"]["image"]["spatial_shape"] = [48, 48]
    write_json(bundle / "configs" / "metadata.json", metadata)
    unetr = {"_target_": "monai.networks.nets.UNETR", "in_channels": 1, "out_channels": "@num_classes",
             "img_size": 48, "spatial_dims": 2, "feature_size": 4, "hidden_size": 16, "mlp_dim": 32, "num_heads": 2}
    edit_json(bundle / "configs" / "inference.json", network_def=unetr)
    code, outcomes = report(bundle, capsys)
    assert code == 0, outcomes
    assert "network_def: 1x48x48 -> 2 channels" in outcomes["net_in_out"]


def test_train_properties_missing(bundle, capsys):
    train = json.loads((bundle / "configs" / "train.json").read_text())
    train["inference_of_training"] = train["train"].pop("inferer")
    train["train"]["trainer"]["inferer"] = "@inference_of_training"
    write_json(bundle / "configs" / "train.json", train)
    code, outcomes = report(bundle, capsys)
    assert code == 1
    assert outcomes["properties"] == (
        "FAIL: train.json: Property 'train_inferer' with config ID 'train::inferer' not in the config.")


def test_inference_properties_checked_given_weights(bundle, capsys):
    """An unpacked artifact's ``models/model.pt`` lets the inference workflow initialise: its properties are checked
    too, here a missing ``dataset_dir``."""
    (bundle / "models").mkdir()
    (bundle / "models" / "model.pt").write_bytes(b"weights")
    assert report(bundle, capsys)[1]["properties"] == "OK (train, inference)"
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    inference["data_folder"] = inference.pop("dataset_dir")
    write_json(bundle / "configs" / "inference.json", inference)
    code, outcomes = report(bundle, capsys)
    assert code == 1 and outcomes["properties"] == (
        "FAIL: inference.json: Property 'dataset_dir' with config ID 'dataset_dir' not in the config.")


REAL_BUNDLES = sorted(path.name for path in verify.bundle_dirs(()))


def test_every_bundle_is_verified_by_default():
    assert len(REAL_BUNDLES) == 12


@pytest.mark.parametrize("name", REAL_BUNDLES)
def test_real_bundle(name, repo_root, capsys):
    """Every bundle of the repository passes (fails while a bundle is still being written)."""
    code = verify.run(str(repo_root / "bundles" / name))
    out = capsys.readouterr().out
    assert code == 0, out
    assert len(out.splitlines()) == len(verify.CHECKS)
