"""A pre-training bundle's ``network_def`` (``inference.json``) is its method's encoder as an image -> features
network (:func:`common.networks.encoder_features`): built from the checkpoint's spec, it loads the ``encoder.*``
weights of the bundle's ``model.pt`` through ``monai.bundle ckpt_export`` (traced: the encoders do not script) and
gives the method's deepest feature map."""

from pathlib import Path

import pytest
import torch
from bundle_weights import SMOKE_SETTINGS, saved_network
from monai.bundle import ConfigParser, ckpt_export

REPO_ROOT = Path(__file__).resolve().parents[1]
VOLUME_BUNDLES = ("glmae_pretrain", "hyspark_pretrain", "mae3d_pretrain", "mim_pretrain", "spark3d_pretrain")
SLICE_BUNDLES = ("byol2d_pretrain", "moco2d_pretrain", "spark2d_pretrain", "swav2d_pretrain")
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("bundle", VOLUME_BUNDLES + SLICE_BUNDLES)
def test_network_def_exports_the_encoder_of_model_pt(bundle, tmp_path):
    configs = REPO_ROOT / "bundles" / bundle / "configs"
    method = saved_network(configs.parent, tmp_path / "model.pt", SMOKE_SETTINGS, "smoke.json").eval()
    shape = [1, 1, 32, 32, 32] if bundle in VOLUME_BUNDLES else [1, 1, 64, 64]
    ckpt_export(
        net_id="network_def",
        filepath=str(tmp_path / "model.ts"),
        ckpt_file=str(tmp_path / "model.pt"),
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.json"),
        key_in_ckpt="model",
        use_trace=True,
        input_shape=shape,
        pretrained=str(tmp_path / "model.pt"),
    )
    exported = torch.jit.load(str(tmp_path / "model.ts"))
    image = torch.rand(shape)
    with torch.no_grad():
        features = exported(image)
        if bundle in ("glmae_pretrain", "mae3d_pretrain"):  # the ViT's patch tokens, cls token left out
            tokens = method.encoder(image)[:, 1:]
            expected = tokens.transpose(1, 2).reshape(1, tokens.shape[2], *features.shape[2:])
        else:
            expected = method.encoder(image)[-1]
    assert features.shape[2:] == torch.Size(s // (16 if bundle in VOLUME_BUNDLES else 32) for s in shape[2:])
    torch.testing.assert_close(features, expected)


@pytest.mark.parametrize("bundle", VOLUME_BUNDLES + SLICE_BUNDLES)
def test_metadata_declares_the_network_def_of_the_papers_sizes(bundle, tmp_path):
    """Without weights ``inference.json`` builds the method at the paper's sizes; ``metadata.json`` declares that
    network's input and output (what ``tools.package`` rewrites for shipped weights of other sizes)."""
    configs = REPO_ROOT / "bundles" / bundle / "configs"
    parser = ConfigParser()
    parser.read_meta(str(configs / "metadata.json"))
    parser.read_config(str(configs / "inference.json"))
    parser["pretrained"] = str(tmp_path / "absent.pt")
    declared = parser["_meta_"]["network_data_format"]
    computed = parser.get_parsed_content("network_spec").network_data_format(declared)
    for section in ("inputs", "outputs"):
        entry = next(iter(declared[section].values()))
        assert {key: entry[key] for key in computed[section]} == computed[section]
