"""MiM: level geometry and exact child / parent correspondence, per-level mask ratios, the cross-level InfoNCE on
hand-checked cases, visible-only encoding of the ConvViT, level schedules (Table XII's ramps), one training step, and
transfer to segmentation."""

import math

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine

from common.engine import TrainingProgress
from common.losses import CrossLevelContrastiveLoss
from common.masking import keep_count, random_patch_mask, upsample_mask
from common.methods import MIM_GEOMETRIES, MiM, MiMGeometry, mim_geometry
from common.methods.mim import level_weights
from common.networks import PRETRAINED_ENCODER_RENAME, ConvViT3D, segmentation_network
from common.transfer import load_pretrained

TINY_ENCODER = {"widths": (6, 6, 12, 12), "depths": (1, 1, 1, 1), "num_heads": 2}
TINY_GEOMETRY = MiMGeometry(crops=((64,) * 3, (32,) * 3, (16,) * 3), inputs=((32,) * 3,) * 3)


def tiny_mim(**kwargs) -> MiM:
    options = dict(geometry=TINY_GEOMETRY, encoder=TINY_ENCODER, decoder_width=12, decoder_depth=1, decoder_heads=2)
    return MiM(**(options | {"contrast_dim": 16} | kwargs))


def test_presets_are_consistent_and_bad_geometries_are_refused():
    official = MIM_GEOMETRIES["official"]
    assert official.region_grid(0) == (2, 2, 2) and official.token_grid(0) == (6, 6, 6)  # octants of 3^3 tokens
    assert official.region_grid(1) == (6, 6, 6) == official.token_grid(1)  # level 3 = one level-2 token
    paper = MIM_GEOMETRIES["paper"]
    assert paper.region_grid(0) == (4, 4, 2) and paper.token_grid(0) == (8, 8, 4)
    with pytest.raises(ValueError, match="does not divide the token grid"):
        MiMGeometry(crops=((384, 384, 192), (96,) * 3, (16,) * 3), inputs=((96,) * 3,) * 3)
    with pytest.raises(ValueError, match="not a multiple of 16"):
        MiMGeometry(crops=((192,) * 3, (96,) * 3, (16,) * 3), inputs=((90,) * 3,) * 3)
    assert mim_geometry({"crops": [[64] * 3, [32] * 3, [16] * 3], "inputs": [[32] * 3] * 3}) == TINY_GEOMETRY
    with pytest.raises(ValueError, match="fewer than children_per_parent"):
        tiny_mim(children_per_parent=6)  # 8 regions per level, 60 % masked: 5 masked
    with pytest.raises(ValueError, match="unknown MiM geometry"):
        mim_geometry("nope")


def test_children_are_masked_regions_of_their_parent_resampled():
    method = tiny_mim(children_per_parent=2)
    ramp = torch.arange(64**3, dtype=torch.float32).view(1, 1, 64, 64, 64)
    image = torch.cat([ramp, -ramp])  # two level-1 crops whose voxels all differ
    levels = method.sample_levels(image, torch.Generator().manual_seed(0))
    assert [level.input.shape[0] for level in levels] == [2, 4, 8]
    for index in range(1, 3):
        parent, child = levels[index - 1], levels[index]
        regions = TINY_GEOMETRY.region_grid(index - 1)
        size = TINY_GEOMETRY.crops[index]
        for n in range(child.crop.shape[0]):
            p, region = n // 2, int(child.parent_region[n])
            x, y, z = (int(c) for c in torch.unravel_index(torch.tensor(region), regions))
            expected = parent.crop[p, :, x * size[0] : (x + 1) * size[0], y * size[1] : (y + 1) * size[1], z * size[2] : (z + 1) * size[2]]
            assert torch.equal(child.crop[n], expected)
            resampled = F.interpolate(expected[None], size=TINY_GEOMETRY.inputs[index], mode="trilinear", align_corners=False)[0]
            assert torch.equal(child.input[n], resampled)
            assert not parent.region_visible[p, 0, x, y, z]  # drawn from a masked region
            tokens = [t // r for t, r in zip(TINY_GEOMETRY.token_grid(index - 1), regions)]
            block = parent.visible[p, 0, x * tokens[0] : (x + 1) * tokens[0], y * tokens[1] : (y + 1) * tokens[1], z * tokens[2] : (z + 1) * tokens[2]]
            assert not block.any()  # ... so its tokens are hidden from the encoder
        per_parent = child.parent_region.view(-1, 2)
        assert all(len(set(row.tolist())) == 2 for row in per_parent)  # without replacement
    for index, level in enumerate(levels):
        cells = math.prod(TINY_GEOMETRY.region_grid(index))
        assert level.region_visible.flatten(1).sum(1).tolist() == [keep_count(cells, 0.6)] * level.input.shape[0]


def test_each_level_is_masked_at_its_own_ratio():
    method = tiny_mim(mask_ratio=[0.5, 0.75, 0.25], children_per_parent=2)  # 8 regions / tokens at every level
    levels = method.sample_levels(torch.rand(2, 1, 64, 64, 64), torch.Generator().manual_seed(0))
    for index, (level, kept) in enumerate(zip(levels, (4, 2, 6))):
        per_region = math.prod(TINY_GEOMETRY.token_grid(index)) // math.prod(TINY_GEOMETRY.region_grid(index))
        assert level.region_visible.flatten(1).sum(1).tolist() == [kept] * level.input.shape[0]
        assert level.visible.flatten(1).sum(1).tolist() == [kept * per_region] * level.input.shape[0]
    assert int(method.mask(torch.zeros(1, 1, 64, 64, 64)).sum()) == keep_count(64, 0.5)  # export: level 1's ratio
    # the official code's ratios (level 1 / 2 / 3 = mask_ratio_up / mid / down): 4 of 8 octants masked, gamma = 4
    official = tiny_mim(geometry="official", mask_ratio=(0.5, 0.6, 0.5))
    assert official.mask_ratios == (0.5, 0.6, 0.5)
    with pytest.raises(ValueError, match="level 1 masks 4 of its 8 regions, fewer than children_per_parent=5"):
        tiny_mim(geometry="official", mask_ratio=(0.5, 0.6, 0.5), children_per_parent=5)
    with pytest.raises(ValueError, match="level 2 masks 2 of its 8 regions"):  # the check holds level by level
        tiny_mim(mask_ratio=(0.5, 0.25, 0.5), children_per_parent=4)
    with pytest.raises(ValueError, match="one per level"):
        tiny_mim(mask_ratio=(0.5, 0.6))


def test_infonce_and_byol_on_hand_checked_cases():
    regions = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])  # (N=1, R=3, D=2)
    context = torch.tensor([[[2.0, 0.0], [0.0, 0.5]]])  # (N=1, G=2): aligned with region 0, then region 1
    labels = torch.tensor([[0, 1]])
    tau = 0.5
    # child 0: cosines (1, 0, -1); child 1: cosines (0, 1, 0)
    expected = (
        -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-2))) - math.log(math.exp(2) / (1 + math.exp(2) + 1))
    ) / 2
    assert CrossLevelContrastiveLoss(tau)(context, regions, labels).item() == pytest.approx(expected, rel=1e-6)
    assert CrossLevelContrastiveLoss(kind="byol")(context, regions, labels).item() == pytest.approx(0.0, abs=1e-6)
    wrong = torch.tensor([[2, 0]])  # cosines (-1, 0) with the claimed sources: 2 - 2cos = 4 and 2
    assert CrossLevelContrastiveLoss(kind="byol")(context, regions, wrong).item() == pytest.approx(3.0)


def test_encoder_sees_visible_voxels_only():
    torch.manual_seed(0)
    encoder = ConvViT3D(**TINY_ENCODER).eval()
    image = torch.rand(2, 1, 64, 64, 64)
    visible = random_patch_mask(2, (4, 4, 4), 0.6, torch.Generator().manual_seed(1))
    changed = torch.where(upsample_mask(visible, image.shape[2:]), image, torch.rand_like(image))
    with torch.no_grad():
        out, out_changed = encoder(image, visible)[-1], encoder(changed, visible)[-1]
        dense, all_visible = encoder(image)[-1], encoder(image, torch.ones_like(visible))[-1]
    assert torch.equal(out, out_changed)  # the transformer's outputs ignore masked voxels
    assert not out.masked_select(~visible).any()  # masked cells are not computed
    assert not torch.allclose(dense * visible, out, atol=1e-3)  # the mask does change the visible tokens' context
    torch.testing.assert_close(all_visible, dense)  # nothing masked = the dense fine-tuning encoder


def test_level_schedules_are_table_xii_ramps():
    assert level_weights("simultaneous", 3, 0.3) == [1.0] * 3 and level_weights("simultaneous", 4, 0.0) == [1.0] * 4
    # Table XII's end points (L_R^1, L_R^2, L_R^3): Coarse -> Fine 1 -> 1, 2 -> 1, 0 -> 1; Fine -> Coarse the mirror.
    assert level_weights("coarse_to_fine", 3, 0.0) == pytest.approx([1.0, 2.0, 0.0])
    assert level_weights("fine_to_coarse", 3, 0.0) == pytest.approx([1.0, 0.0, 2.0])
    for schedule in ("coarse_to_fine", "fine_to_coarse"):
        assert level_weights(schedule, 3, 1.0) == pytest.approx([1.0, 1.0, 1.0])
    # halfway: the official 1 + cos(pi p / 2) and sin(pi p / 2) at p = 1/2
    half = math.sqrt(0.5)
    assert level_weights("coarse_to_fine", 3, 0.5) == pytest.approx([1.0, 1.0 + half, half])
    assert level_weights("fine_to_coarse", 3, 0.5) == pytest.approx([1.0, half, 1.0 + half])
    # continuous and monotone: steps of 1/1000 move no weight by more than pi / 2000
    ramp = [level_weights("coarse_to_fine", 3, step / 1000) for step in range(1001)]
    for before, after in zip(ramp, ramp[1:]):
        assert max(abs(a - b) for a, b in zip(before, after)) <= math.pi / 2000 + 1e-12
        assert after[0] == 1.0 and after[1] < before[1] and after[2] > before[2]
    with pytest.raises(ValueError, match="unknown level schedule"):
        level_weights("random", 3, 0.0)
    two_levels = MiMGeometry(crops=((32,) * 3, (16,) * 3), inputs=((32,) * 3,) * 2)
    assert tiny_mim(geometry=two_levels).level_schedule == "simultaneous"
    with pytest.raises(ValueError, match="defined for 3 levels"):
        tiny_mim(geometry=two_levels, level_schedule="coarse_to_fine")
    with pytest.raises(ValueError, match="progress must be in"):
        level_weights("fine_to_coarse", 3, 1.5)


def test_training_progress_follows_the_iteration():
    class Target:
        progress = None

    target, seen = Target(), []
    engine = Engine(lambda engine, batch: seen.append(target.progress))
    TrainingProgress(target).attach(engine)
    engine.run(range(2), max_epochs=2)
    assert seen == [0.0, 0.25, 0.5, 0.75]


def test_one_step_trains_every_part_and_reports_each_loss():
    torch.manual_seed(0)
    method = tiny_mim(children_per_parent=2, level_schedule="coarse_to_fine")
    result = method({"image": torch.rand(2, 1, 64, 64, 64)}, images=True)
    expected = {"loss", "loss/recon", "loss/contrast", "loss/contrast_level1_2", "loss/contrast_level2_3"}
    assert expected | {f"loss/recon_level{i}" for i in (1, 2, 3)} == set(k for k in result if k.startswith("loss"))
    recon = [result[f"loss/recon_level{i}"] for i in (1, 2, 3)]
    torch.testing.assert_close(result["loss/recon"], (recon[0] + 2 * recon[1]) / 3)  # weights 1, 2, 0 at progress 0
    torch.testing.assert_close(result["loss"].detach(), result["loss/recon"] + 0.1 * result["loss/contrast"])
    assert sorted(result["images"]) == sorted(f"level{i}_{n}" for i in (1, 2, 3) for n in ("input", "masked", "reconstruction"))
    result["loss"].backward()
    for name in ("encoder.blocks.0.attn.qkv.weight", "encoder.patch_embeds.0.0.weight", "decoder.predict.weight",
                 "context_heads.1.0.weight", "region_heads.0.2.weight"):
        assert method.get_parameter(name).grad.abs().sum() > 0, name


def test_pretrained_encoder_loads_into_the_segmentation_network_and_reproduces_its_features(tmp_path):
    torch.manual_seed(0)
    method = tiny_mim()
    torch.save(method.state_dict(), tmp_path / "model.pt")
    network = segmentation_network("mim", out_channels=3, feature_size=6, encoder_config=TINY_ENCODER)
    report = load_pretrained(network, tmp_path / "model.pt", rename=PRETRAINED_ENCODER_RENAME["mim"])
    encoder_tensors = [k for k in network.state_dict() if k.startswith("encoder.")]
    assert len(report.matched) >= 0.95 * len(encoder_tensors)
    image = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        for mine, theirs in zip(network.encoder.eval()(image), method.encoder.eval()(image)):
            torch.testing.assert_close(mine, theirs)
        assert network(image).shape == (1, 3, 32, 32, 32)
