"""``--arch mim_official``: MiM's official 5-level ConvViT UNETR (common.networks.convvit_unetr): its levels, skip
widths and layer-normed skips, a ``mim_pretrain`` encoder loading into it whole, its network spec, freezing."""

import pytest
import torch

from common.methods import MiM, method_spec
from common.networks import (
    PRETRAINED_ENCODER_RENAME,
    ConvViTUNETR,
    adapt_encoder,
    convvit_config,
    segmentation_encoder_config,
    segmentation_network,
    segmentation_spec,
)
from common.networks.spec import spec_from_state
from common.transfer import SEGMENTATION_PRETRAINING, load_pretrained, pretrained_encoder_setting

DEMO = convvit_config(cpu_demo_scale=True)  # widths 16, 32, 64, 96: feature_size 96 / 8 = 12
LABELS = {0: "background", 1: "spleen", 2: "liver"}


def demo_network() -> ConvViTUNETR:
    torch.manual_seed(0)
    return segmentation_network("mim_official", out_channels=3, encoder_config=segmentation_encoder_config(
        "mim_official", cpu_demo_scale=True))


def test_five_levels_with_layer_normed_skips_of_the_official_widths():
    network = demo_network()
    assert isinstance(network, ConvViTUNETR) and len(network.ups) == 5
    seen = {}
    for i, up in enumerate(network.ups):
        up.register_forward_hook(lambda module, args, out, i=i: seen.update({i: (args[0].shape, args[1], out.shape)}))
    normed = {}
    for i, skip in enumerate(network.skips[1:], 1):  # stages 1-3 enter their blocks layer-normed
        skip.register_forward_pre_hook(lambda module, args, i=i: normed.update({i: args[0]}))
    with torch.no_grad():
        logits = network(torch.rand(1, 1, 64, 64, 64))
    assert logits.shape == (1, 3, 64, 64, 64)
    # fine to coarse: skips of f, f, 2f, 4f, 8f channels at 1, 1/2, .., 1/16 (48/48/96/192/384 at f = 48)
    assert [seen[i][1].shape[1] for i in range(5)] == [12, 12, 24, 48, 96]
    assert [seen[i][1].shape[2] for i in range(5)] == [64, 32, 16, 8, 4]
    assert seen[4][0] == (1, 192, 2, 2, 2)  # the decoder starts from the 1/32 map, 16f wide
    assert [seen[i][2][1] for i in range(5)] == [12, 12, 24, 48, 96]
    for skip in [*normed.values(), seen[4][1]]:  # channel LayerNorm without affine: mean 0, variance 1 per voxel
        torch.testing.assert_close(skip.mean(1), torch.zeros_like(skip[:, 0]), atol=1e-5, rtol=0)
        torch.testing.assert_close(skip.var(1, unbiased=False), torch.ones_like(skip[:, 0]), atol=1e-3, rtol=0)


def test_paper_size_has_the_official_widths_and_a_feature_size_that_breaks_them_is_refused():
    network = segmentation_network("mim_official")  # paper encoder, feature_size None
    skips = [block.layer.conv2.conv.out_channels for block in network.skips]
    assert skips + [network.encoder.feature_channels[-1]] == [48, 48, 96, 192, 384]
    assert network.stage5[0].out_channels == network.bottleneck.layer.conv2.conv.out_channels == 768
    assert [up.transp_conv.conv.in_channels for up in network.ups] == [48, 96, 192, 384, 768]
    assert not hasattr(network.bottleneck.layer, "conv3")  # 768 -> 768: no projection, as in the official code
    with pytest.raises(ValueError, match="feature_size must be 96 / 8; got 48"):
        segmentation_network("mim_official", feature_size=48, encoder_config=DEMO)


def test_a_mim_pretrain_checkpoint_loads_its_whole_encoder_as_into_mim(tmp_path):
    torch.manual_seed(0)
    method = MiM(encoder=DEMO, decoder_width=24, decoder_depth=1, decoder_heads=2, contrast_dim=16)
    torch.save(method.state_dict(), tmp_path / "model.pt")
    network = demo_network()
    report = load_pretrained(network, tmp_path / "model.pt", rename=PRETRAINED_ENCODER_RENAME["mim_official"])
    assert not report.shape_mismatch and not [name for name in report.missing if name.startswith("encoder.")]
    mim = segmentation_network("mim", feature_size=12, encoder_config=DEMO)
    assert sorted(report.matched) == sorted(
        load_pretrained(mim, tmp_path / "model.pt", rename=PRETRAINED_ENCODER_RENAME["mim"]).matched
    )
    for name, tensor in method.encoder.state_dict().items():
        torch.testing.assert_close(network.encoder.state_dict()[name], tensor)


def test_the_encoder_size_comes_from_a_mim_checkpoint_and_another_method_is_refused(tmp_path):
    encoder = {"widths": [8, 8, 16, 24], "depths": [1] * 4, "num_heads": 2}
    for method, settings in [("MiM", {"encoder": encoder}), ("SparK3D", {"decoder_width": 16})]:
        spec = method_spec(method, {**settings, "decoder_width": 16})
        torch.save({"model": {}, "network_spec": spec.state_dict()}, tmp_path / f"{method}.pt")
    assert pretrained_encoder_setting(tmp_path / "MiM.pt", None, SEGMENTATION_PRETRAINING["mim_official"]) == encoder
    with pytest.raises(ValueError, match="was pre-trained by SparK3D; this architecture fine-tunes the encoder of MiM"):
        pretrained_encoder_setting(tmp_path / "SparK3D.pt", None, SEGMENTATION_PRETRAINING["mim_official"])


def test_the_network_spec_rebuilds_it_with_its_lora_adapters():
    saved = segmentation_spec(LABELS, arch="mim_official", roi_size=(64, 64, 64), encoder_config=DEMO, lora_rank=2)
    torch.manual_seed(0)
    state = saved.build().state_dict()
    rebuilt = spec_from_state(saved.state_dict(), "model.pt")
    network = rebuilt.build()
    network.load_state_dict(state)  # strict: same keys and shapes, adapters included
    assert isinstance(network, ConvViTUNETR) and any("lora_" in key for key in state)
    assert rebuilt.arguments == saved.arguments and rebuilt.arguments["feature_size"] is None


@pytest.mark.parametrize("lora_rank, freeze_encoder", [(0, True), (2, False)])
def test_a_frozen_encoder_leaves_the_decoder_and_1_32_stage_trainable(lora_rank, freeze_encoder):
    network = adapt_encoder(demo_network(), "mim_official", lora_rank, freeze_encoder)
    trainable = {name for name, p in network.named_parameters() if p.requires_grad}
    in_encoder = {name for name in trainable if name.startswith("encoder.")}
    assert in_encoder == {name for name in in_encoder if "lora_" in name} and bool(in_encoder) == bool(lora_rank)
    decoder = {name for name, _ in network.named_parameters() if not name.startswith("encoder.")}
    assert trainable - in_encoder == decoder and any(name.startswith("stage5.") for name in decoder)
