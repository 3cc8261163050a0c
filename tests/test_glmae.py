"""GL-MAE and MAE3D: views, the masked ViT, the consistency loss, the momentum teacher, and transfer into UNETR."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.losses import GlobalGuidedConsistencyLoss
from common.methods import GLMAE, MAE3D
from common.networks import CLASSIFICATION_ENCODER_RENAME, adapt_encoder, classification_network, segmentation_network
from common.networks.vit import MaskedViT, interpolate_position_embedding
from common.transfer import load_pretrained
from common.transforms import RandGlobalLocalViewsd

TINY_VIT = {"hidden_size": 24, "mlp_dim": 48, "num_layers": 12, "num_heads": 2}


def tiny_glmae(**kwargs) -> GLMAE:
    sizes = {"decoder_width": 12, "decoder_depth": 1, "decoder_heads": 2, "num_prototypes": 16, "head_hidden": 16}
    return GLMAE(img_size=(32,) * 3, encoder=TINY_VIT, **(sizes | kwargs))


def test_views_are_resized_cubes_within_their_scale_ranges():
    views = RandGlobalLocalViewsd("image", 2, 32, (0.5, 1.0), 3, 16, (0.25, 0.5))
    views.set_random_state(0)
    shape = (80, 64, 100)
    for _ in range(20):
        for kind, boxes in views.randomize(shape).items():
            low, high = views.views[kind][2]
            for start, side in boxes:
                assert math.floor(low * 64) <= side <= math.ceil(high * 64)
                assert all(0 <= s and s + side <= size for s, size in zip(start, shape))

    image = torch.rand(1, *shape)
    views.set_random_state(7)
    out = views({"image": image})
    assert "image" not in out and out["global_views"].shape == (2, 1, 32, 32, 32) and out["local_views"].shape == (3, 1, 16, 16, 16)
    views.set_random_state(7)
    start, side = views.randomize(shape)["local_views"][1]
    crop = image[(slice(None), *(slice(s, s + side) for s in start))]
    expected = F.interpolate(crop[None], size=(16,) * 3, mode="trilinear", align_corners=False)[0]
    assert torch.allclose(out["local_views"][1], expected)


def test_view_scales_are_checked():
    with pytest.raises(ValueError, match="local_scale"):
        RandGlobalLocalViewsd("image", local_scale=(0.5, 1.5))


def test_position_embedding_interpolation():
    embedding = torch.randn(1, 27, 8)
    assert interpolate_position_embedding(embedding, (3, 3, 3), (3, 3, 3)) is embedding
    constant = torch.ones(1, 8, 4) * torch.arange(4.0)
    assert torch.allclose(interpolate_position_embedding(constant, (2, 2, 2), (5, 4, 3)), torch.ones(1, 60, 4) * torch.arange(4.0))
    # a token grid of 2 along each axis up-sampled to 4: cells 0 and 1 of the new grid both take old cell 0 ...
    ramp = torch.tensor([0.0, 1.0]).view(2, 1, 1).expand(2, 2, 2).reshape(1, 8, 1)
    resized = interpolate_position_embedding(ramp, (2, 2, 2), (4, 4, 4)).view(4, 4, 4)
    assert torch.allclose(resized[:, 0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))


def test_masked_vit_encodes_visible_tokens_only():
    torch.manual_seed(0)
    encoder = MaskedViT(1, (32,) * 3, **TINY_VIT).eval()
    image = torch.rand(2, 1, 48, 48, 48)  # another grid than the position embedding's: interpolated
    visible = torch.zeros(2, 1, 3, 3, 3, dtype=torch.bool)
    visible[0, 0, 0, :, 1] = visible[1, 0, 2, 1, :] = True
    tokens = encoder(image, visible)
    assert tokens.shape == (2, 1 + 3, 24) and encoder(image).shape == (2, 1 + 27, 24)
    changed = image.clone()
    hidden = ~visible.repeat_interleave(16, 2).repeat_interleave(16, 3).repeat_interleave(16, 4)
    changed[hidden] = torch.rand(int(hidden.sum()))
    assert torch.allclose(encoder(changed, visible), tokens, atol=1e-6)


def test_consistency_loss_equals_a_hand_computation():
    loss = GlobalGuidedConsistencyLoss(num_prototypes=2, student_temperature=0.5, teacher_temperature=0.25, center_momentum=0.9)
    teacher = torch.tensor([[[1.0, 0.0]]])  # (B=1, T=1, K=2)
    student = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])  # (B=1, S=2, K=2)
    p_teacher = np.exp([4.0, 0.0]) / np.exp([4.0, 0.0]).sum()  # softmax([1, 0] / 0.25)
    log_p = [np.array([0.0, 2.0]) - np.log(np.exp([0.0, 2.0]).sum()), np.log([0.5, 0.5])]  # log softmax(s / 0.5)
    expected = np.mean([-(p_teacher * lp).sum() for lp in log_p])
    assert loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)

    loss.update_center(teacher)
    assert torch.allclose(loss.center, torch.tensor([[0.1, 0.0]]))
    p_centred = np.exp([(1 - 0.1) / 0.25, 0.0]) / np.exp([(1 - 0.1) / 0.25, 0.0]).sum()
    assert loss(student, teacher).item() == pytest.approx(np.mean([-(p_centred * lp).sum() for lp in log_p]), rel=1e-6)


def test_teacher_gets_no_gradient_and_follows_the_ema_formula():
    torch.manual_seed(0)
    method = tiny_glmae()
    batch = {"global_views": torch.rand(2, 2, 1, 48, 48, 48), "local_views": torch.rand(2, 3, 1, 32, 32, 32)}
    result = method(batch)
    assert {"loss/recon_local", "loss/recon_global", "loss/consistency_gg", "loss/consistency_gl"} < set(result)
    parts = [result[k] for k in ("loss/recon_local", "loss/recon_global", "loss/consistency_gg", "loss/consistency_gl")]
    assert result["loss"].item() == pytest.approx(sum(p.item() for p in parts), rel=1e-5)
    result["loss"].backward()
    teacher = list(method.teacher_encoder.parameters()) + list(method.teacher_head.parameters())
    student = list(method.encoder.parameters()) + list(method.head.parameters())
    assert all(not t.requires_grad and t.grad is None for t in teacher)
    assert all(s.grad is not None for s in method.head.parameters())
    with torch.no_grad():
        for s in student:
            s.add_(torch.randn_like(s))  # an optimizer step
    before = [t.clone() for t in teacher]
    method.update_teacher(0.9)
    assert all(torch.allclose(t, 0.9 * b + 0.1 * s) for t, b, s in zip(teacher, before, student))
    trainable = {name.split(".")[0] for name, p in method.named_parameters() if p.requires_grad}
    assert trainable == {"encoder", "decoder", "head"}


def test_mae3d_loss_scores_masked_patches_only():
    torch.manual_seed(0)
    method = MAE3D(img_size=(32,) * 3, encoder=TINY_VIT, decoder_width=12, decoder_depth=1, decoder_heads=2)
    image = torch.rand(2, 1, 32, 32, 32)
    visible = method.mask(image, torch.Generator().manual_seed(0))
    assert visible.shape == (2, 1, 2, 2, 2) and visible.flatten(1).sum(1).tolist() == [2, 2]  # 75 % of 8 masked
    result = method({"image": image}, images=True)
    assert result["loss"].item() == pytest.approx(result["loss/recon"].item()) and result["loss"].item() > 0
    assert set(result["images"]) == {"input", "masked", "reconstruction", "target"}


@pytest.mark.parametrize("method", [tiny_glmae, lambda: MAE3D(img_size=(32,) * 3, encoder=TINY_VIT, decoder_width=12, decoder_depth=1, decoder_heads=2)])
def test_pre_trained_vit_transfers_into_unetr_with_interpolated_position_embedding(tmp_path, method):
    torch.manual_seed(0)
    pretrained = method()
    torch.save({"model": pretrained.state_dict()}, tmp_path / "model.pt")
    unetr = segmentation_network("unetr", out_channels=3, roi_size=(64, 64, 64), encoder_config=TINY_VIT)
    report = load_pretrained(unetr, tmp_path / "model.pt", rename={"encoder.vit.": "vit."})
    vit_names = [name for name in unetr.state_dict() if name.startswith("vit.")]
    assert sorted(report.matched) == sorted(vit_names) and report.resized == ["vit.patch_embedding.position_embeddings"]
    assert not report.shape_mismatch and not report.unexpected  # the cls token is outside the rename
    source = pretrained.encoder.vit.patch_embedding.position_embeddings
    assert torch.allclose(unetr.vit.patch_embedding.position_embeddings, interpolate_position_embedding(source, (2,) * 3, (4,) * 3))
    assert torch.equal(unetr.vit.blocks[11].mlp.linear1.weight, pretrained.encoder.vit.blocks[11].mlp.linear1.weight)


def test_linear_evaluation_freezes_the_encoder_only():
    unetr = segmentation_network("unetr", out_channels=3, roi_size=(32,) * 3, encoder_config=TINY_VIT)
    network = adapt_encoder(unetr, "unetr", freeze_encoder=True)
    frozen = {name for name, p in network.named_parameters() if not p.requires_grad}
    assert frozen == {name for name, _ in network.named_parameters() if name.startswith("vit.")}
    assert any(p.requires_grad for p in network.parameters())
    with pytest.raises(ValueError, match="not both"):
        unetr = segmentation_network("unetr", out_channels=3, roi_size=(32,) * 3, encoder_config=TINY_VIT)
        adapt_encoder(unetr, "unetr", 4, True)
    with pytest.raises(ValueError, match="12-layer"):
        segmentation_network("unetr", encoder_config=TINY_VIT | {"num_layers": 4})


def test_pre_trained_vit_loads_into_the_volume_classifier(tmp_path):
    torch.manual_seed(0)
    torch.save(tiny_glmae().state_dict(), tmp_path / "model.pt")
    classifier = classification_network("vit", num_classes=3, roi_size=(64,) * 3, encoder_config={"patch_size": 16, **TINY_VIT})
    report = load_pretrained(classifier, tmp_path / "model.pt", rename=CLASSIFICATION_ENCODER_RENAME["vit"])
    assert sorted(report.matched) == sorted(f"encoder.{name}" for name in classifier.encoder.state_dict())
    assert report.resized == ["encoder.patch_embedding.position_embeddings"] and not report.shape_mismatch
    assert report.unexpected == ["encoder.cls_token"]  # the longest prefix wins: no encoder.vit.* left over
