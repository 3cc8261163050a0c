"""SparK / SparK-3D / SparK 2D / HySparK: the loss scores masked patches only, a step learns, the encoder sees
the visible region only, and the pre-trained encoders transfer into the downstream networks (>= 95 % of
tensors, identical features)."""

import copy

import pytest
import torch

from common.losses import MaskedPatchReconstructionLoss, patchify, unpatchify
from common.masking import random_patch_mask, upsample_mask
from common.methods import HySparK, SparK2D, SparK3D
from common.networks import PRETRAINED_ENCODER_RENAME, hybrid_config, resnet_classifier, segmentation_network
from common.transfer import load_pretrained

TINY_HYBRID = {"channels": (4, 8, 8, 12, 12), "depths": (1, 1, 1, 1, 1), "vit_depth": 1, "num_heads": 2}


def test_patchify_round_trips_and_orders_cells_like_the_mask():
    x = torch.randn(2, 1, 32, 32, 32)
    patches = patchify(x, 16)
    assert patches.shape == (2, 8, 16**3)
    assert torch.equal(unpatchify(patches, 16, x), x)
    assert torch.equal(patches[:, 1], x[:, 0, :16, :16, 16:].flatten(1))  # raster order of the (2, 2, 2) grid


@pytest.mark.parametrize("spatial_size", [(8, 8, 8), (8, 8)], ids=["3d", "2d"])
def test_loss_is_per_patch_normalised_mse_on_masked_patches_only(spatial_size):
    loss = MaskedPatchReconstructionLoss(patch_size=4)
    image = torch.rand(2, 1, *spatial_size) * 3 + 1
    visible = random_patch_mask(2, [s // 4 for s in spatial_size], 0.5, generator=torch.Generator().manual_seed(0))
    prediction = torch.randn_like(image)
    value = loss(prediction, image, visible)

    target = patchify(image, 4)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    per_patch = (patchify(prediction, 4) - target).square().mean(-1)
    masked = ~visible.flatten(1)
    torch.testing.assert_close(value, per_patch[masked].mean())

    on_visible = torch.where(upsample_mask(visible, image.shape[2:]), torch.randn_like(image) * 10, prediction)
    torch.testing.assert_close(loss(on_visible, image, visible), value)  # visible patches do not count
    on_masked = torch.where(upsample_mask(visible, image.shape[2:]), prediction, prediction + 1)
    assert loss(on_masked, image, visible) > value


def test_hyspark_step_returns_named_losses_and_images_and_learns_a_fixed_batch():
    torch.manual_seed(0)
    method = HySparK(encoder=TINY_HYBRID, decoder_width=16, sparse_backend="masked")
    image = torch.rand(2, 1, 32, 32, 32)
    optimizer = torch.optim.AdamW(method.parameters(), lr=3e-3)
    torch.manual_seed(1)
    losses = []
    for _ in range(5):
        torch.manual_seed(1)  # the same mask every step: over-fit one masked batch
        out = method({"image": image})
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert set(out) == {"loss", "loss/recon"}  # images only when asked
    out = method({"image": image}, images=True)
    assert set(out) == {"loss", "loss/recon", "images"}
    assert set(out["images"]) == {"input", "masked", "reconstruction", "target"}
    assert all(v.shape == (1, *image.shape[1:]) for v in out["images"].values())  # the first sample
    assert losses[-1] < 0.8 * losses[0], losses


def test_hyspark_encoder_transfers_into_the_segmentation_network(tmp_path):
    torch.manual_seed(0)
    method = HySparK(encoder=TINY_HYBRID, decoder_width=16)
    torch.save(method.state_dict(), tmp_path / "model.pt")
    network = segmentation_network("hyspark", out_channels=3, encoder_config=TINY_HYBRID)
    report = load_pretrained(network, tmp_path / "model.pt", rename=PRETRAINED_ENCODER_RENAME["hyspark"])
    encoder_tensors = [n for n in network.state_dict() if n.startswith("encoder.")]
    assert len(set(report.matched) & set(encoder_tensors)) >= 0.95 * len(encoder_tensors)
    assert not report.shape_mismatch and not report.unexpected

    image = torch.randn(1, 1, 32, 32, 32)
    method.eval(), network.eval()
    with torch.no_grad():
        for a, b in zip(method.encoder(image), network.encoder(image)):
            assert torch.equal(a, b)


def test_spark3d_encoder_transfers_into_monai_mednext(tmp_path):
    torch.manual_seed(0)
    method = SparK3D(decoder_width=32)
    torch.save({"method": method.state_dict()}, tmp_path / "checkpoint.pt")
    network = segmentation_network("mednext", out_channels=3)
    report = load_pretrained(network, tmp_path / "checkpoint.pt", rename=PRETRAINED_ENCODER_RENAME["mednext"])
    encoder_tensors = [n for n in method.encoder.state_dict()]
    assert len(report.matched) >= 0.95 * len(encoder_tensors)
    assert not report.shape_mismatch

    image = torch.randn(1, 1, 32, 32, 32)
    method.eval(), network.eval()
    with torch.no_grad():
        x = network.stem(image)
        for stage, down, feature in zip(network.enc_stages, network.down_blocks, method.encoder(image)):
            x = stage(x)
            assert torch.equal(x, feature)
            x = down(x)


def test_cpu_demo_hybrid_is_the_paper_structure_at_a_smaller_width():
    paper, demo = hybrid_config(False), hybrid_config(True)
    assert paper["channels"] == (32, 64, 128, 256, 384) and paper["depths"] == (1, 1, 3, 3, 1)
    assert paper["num_heads"] == 12 and paper["vit_depth"] == 3
    assert len(demo["channels"]) == 5 and demo["channels"][-1] % 6 == 0


@pytest.mark.usefixtures("spconv_or_skip")
def test_reconstruct_with_spconv_matches_masked_backend():
    torch.manual_seed(0)
    method = HySparK(encoder=TINY_HYBRID, decoder_width=16, sparse_backend="masked").eval()
    twin = copy.deepcopy(method)
    twin.sparse_backend = "spconv"
    image = torch.rand(2, 1, 32, 32, 32)
    visible = method.mask(image)
    with torch.no_grad():
        torch.testing.assert_close(twin.reconstruct(image, visible), method.reconstruct(image, visible), atol=1e-4, rtol=1e-4)


def test_spark2d_reconstruction_depends_on_the_visible_patches_only():
    torch.manual_seed(0)
    method = SparK2D(decoder_width=32, sparse_backend="masked")  # train mode: BatchNorm over visible positions
    image = torch.rand(2, 1, 96, 96)
    visible = method.mask(image)
    assert visible.shape == (2, 1, 3, 3) and (visible.flatten(1).sum(1) == round(9 * 0.4)).all()
    hidden = ~upsample_mask(visible, image.shape[2:])
    altered = torch.where(hidden, torch.rand_like(image) * 5, image)
    with torch.no_grad():
        torch.testing.assert_close(method.reconstruct(altered, visible), method.reconstruct(image, visible))

    out = method({"image": image}, images=True)
    out["loss"].backward()
    assert set(out) == {"loss", "loss/recon", "images"}
    assert all(v.shape == (1, *image.shape[1:]) for v in out["images"].values())
    assert all(norm.weight.grad is not None for norm in method.densify_norms)


@pytest.mark.usefixtures("spconv_or_skip")
def test_spark2d_spconv_matches_masked_backend():
    torch.manual_seed(0)
    method = SparK2D(depth=18, decoder_width=32, sparse_backend="masked").eval()
    twin = copy.deepcopy(method)
    twin.sparse_backend = "spconv"
    image = torch.rand(2, 1, 64, 64)
    visible = method.mask(image)
    with torch.no_grad():
        torch.testing.assert_close(twin.reconstruct(image, visible), method.reconstruct(image, visible), atol=1e-4, rtol=1e-4)


def test_spark2d_encoder_transfers_into_monai_resnet(tmp_path):
    torch.manual_seed(0)
    method = SparK2D(decoder_width=32)
    torch.save({"model": method.state_dict()}, tmp_path / "model.pt")
    network = resnet_classifier(50, spatial_dims=2, in_channels=1, num_classes=2)
    report = load_pretrained(network, tmp_path / "model.pt", rename={"encoder.": ""})
    assert len(report.matched) == len(method.encoder.state_dict()) and not report.shape_mismatch

    image = torch.randn(1, 1, 64, 64)
    method.eval(), network.eval()
    with torch.no_grad():
        pooled = network.avgpool(network.layer4(network.layer3(network.layer2(network.layer1(
            network.maxpool(network.act(network.bn1(network.conv1(image)))))))))
        torch.testing.assert_close(pooled.flatten(1), method.encoder.pooled(image))
