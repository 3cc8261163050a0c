"""MoCo v2 and BYOL on 2D slices: the losses on hand-checked toy values, the key queue, the momentum update, the
collapse statistic, the methods' forward at 64 x 64, and the 2D view transforms (random resized crop, stacked views)."""

import math

import pytest
import torch

from common.losses import BYOLLoss, InfoNCELoss, embedding_std
from common.methods import BYOL, MoCoV2
from common.methods.moco import KeyQueue
from common.transforms.views2d import MultiViewd, RandResizedCropd, contrastive_augmentations, swav_augmentations


def test_infonce_with_a_queue_matches_the_hand_computed_loss():
    # q = (1, 0), k+ = (0.6, 0.8): q.k+ = 0.6; queue (0, 1) and (-1, 0): q.k = 0 and -1; tau = 0.5
    query, key = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.6, 0.8]])  # the query is normalised inside
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    loss = InfoNCELoss(temperature=0.5)(query, key, queue)
    expected = -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(0.0) + math.exp(-2.0)))
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    logits = InfoNCELoss(temperature=0.5).logits(query, key, queue)
    assert torch.allclose(logits, torch.tensor([[1.2, 0.0, -2.0]]))


def test_infonce_gradient_reaches_the_query_only():
    query = torch.randn(3, 4, requires_grad=True)
    key = torch.randn(3, 4, requires_grad=True)
    InfoNCELoss(0.2)(query, key, torch.randn(5, 4)).backward()
    assert query.grad is not None and query.grad.abs().sum() > 0 and key.grad is None


def test_key_queue_enqueues_at_the_pointer_and_wraps_around():
    queue = KeyQueue(size=5, dim=2)
    assert torch.allclose(queue.keys.norm(dim=1), torch.ones(5))  # starts with random unit keys
    first = torch.arange(6.0).reshape(3, 2)
    queue.push(first)
    assert torch.equal(queue.keys[:3], first) and int(queue.pointer) == 3
    second = -torch.arange(1.0, 7.0).reshape(3, 2)
    queue.push(second)  # rows 3, 4, then wraps to row 0
    assert torch.equal(queue.keys[3:], second[:2]) and torch.equal(queue.keys[0], second[2])
    assert torch.equal(queue.keys[1:3], first[1:]) and int(queue.pointer) == 1
    queue.push(torch.ones(7, 2) * torch.arange(7.0)[:, None])  # more keys than slots: the newest 5 stay
    assert sorted(queue.keys[:, 0].tolist()) == [2.0, 3.0, 4.0, 5.0, 6.0]


def test_byol_loss_is_two_minus_two_cosine_summed_over_both_directions():
    p1, p2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    z1, z2 = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    # cos(p1, z2) = 1/sqrt(2), cos(p2, z1) = 0
    loss = BYOLLoss()((p1, p2), (z1, z2))
    assert loss.item() == pytest.approx((2 - 2 / math.sqrt(2)) + 2.0, abs=1e-6)
    assert BYOLLoss()((p1, p2), (p1, p2)).item() == pytest.approx(4.0)  # p1 vs z2 = p2 and back: orthogonal
    assert BYOLLoss()((p1, p2), (p2 * 5, p1 * 0.5)).item() == pytest.approx(0.0, abs=1e-6)  # aligned, scale-free


def test_embedding_std_is_zero_for_collapsed_and_about_one_over_sqrt_d_for_spread_embeddings():
    collapsed = torch.ones(64, 16) * torch.randn(1, 16)
    assert embedding_std(collapsed).item() == pytest.approx(0.0, abs=1e-6)
    torch.manual_seed(0)
    spread = torch.randn(4096, 16)
    assert embedding_std(spread).item() == pytest.approx(1 / math.sqrt(16), rel=0.05)
    one_hot = torch.eye(2).repeat(2, 1)  # (1,0), (0,1), (1,0), (0,1): std over 4 samples of [1, 0, 1, 0]
    assert embedding_std(one_hot).item() == pytest.approx(torch.tensor([1.0, 0.0, 1.0, 0.0]).std().item())


@pytest.mark.parametrize("method_class", [MoCoV2, BYOL])
def test_update_teacher_moves_the_momentum_copy_towards_the_online_network(method_class):
    torch.manual_seed(0)
    method = method_class(depth=18)
    online, teacher = (
        (method.encoder, method.key_encoder) if method_class is MoCoV2 else (method.encoder, method.target_encoder)
    )
    assert torch.equal(online.conv1.weight, teacher.conv1.weight)  # starts as a copy
    assert not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        online.conv1.weight.add_(1.0)
    before, current = teacher.conv1.weight.clone(), online.conv1.weight.clone()
    method.update_teacher(0.9)
    assert torch.allclose(teacher.conv1.weight, 0.9 * before + 0.1 * current)


def test_moco_forward_at_64_pixels_returns_loss_and_stats_and_fills_the_queue():
    torch.manual_seed(0)
    method = MoCoV2(depth=50, hidden_features=32, embedding_dim=8, queue_size=6, temperature=0.2)
    queue_before = method.queue.keys.clone()
    out = method({"views": torch.rand(2, 2, 1, 64, 64)})
    assert set(out) == {"loss", "loss/infonce", "stat/embedding_std", "stat/positive_similarity",
                        "stat/negative_similarity", "stat/key_accuracy"}
    assert out["loss"].ndim == 0 and out["loss"].requires_grad
    out["loss"].backward()
    assert method.encoder.conv1.weight.grad is not None and method.key_encoder.conv1.weight.grad is None
    assert int(method.queue.pointer) == 2 and not torch.equal(method.queue.keys[:2], queue_before[:2])
    assert torch.allclose(method.queue.keys[:2].norm(dim=1), torch.ones(2))  # normalised keys
    assert -1 <= out["stat/positive_similarity"] <= 1 and 0 <= out["stat/key_accuracy"] <= 1
    method.eval()
    method({"views": torch.rand(2, 2, 1, 64, 64)})
    assert int(method.queue.pointer) == 2  # evaluation leaves the queue alone
    with pytest.raises(ValueError, match="views"):
        method({"views": torch.rand(2, 3, 1, 64, 64)})


def test_byol_forward_at_64_pixels_is_symmetric_and_trains_only_the_online_network():
    torch.manual_seed(0)
    method = BYOL(depth=50, hidden_features=32, projection_dim=8)
    out = method({"views": torch.rand(2, 2, 1, 64, 64)})
    assert set(out) == {"loss", "loss/regression_12", "loss/regression_21", "stat/embedding_std",
                        "stat/positive_similarity"}
    assert out["loss"].item() == pytest.approx((out["loss/regression_12"] + out["loss/regression_21"]).item(), abs=1e-5)
    assert 0 <= out["loss"].item() <= 8
    out["loss"].backward()
    assert method.predictor[0].weight.grad is not None and method.encoder.conv1.weight.grad is not None
    assert method.target_encoder.conv1.weight.grad is None and method.target_projector[0].weight.grad is None


def test_encoder_state_dict_loads_into_the_downstream_resnet():
    from common.networks import resnet_classifier

    state = {k[len("encoder."):]: v for k, v in BYOL(depth=18).state_dict().items() if k.startswith("encoder.")}
    missing, unexpected = resnet_classifier(depth=18).load_state_dict(state, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected


def test_rand_resized_crop_follows_torchvision_area_and_ratio():
    crop = RandResizedCropd("image", size=8, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    crop.set_random_state(0)
    for _ in range(5):
        top, left, h, w = crop.randomize((40, 40))
        assert (h, w) == (20, 20) and 0 <= top <= 20 and 0 <= left <= 20  # a quarter of the area, square
    # nothing fits (a square of the full area in a 10 x 40 image): the central crop of the widest allowed ratio
    fallback = RandResizedCropd("image", size=8, scale=(1.0, 1.0), ratio=(1.0, 2.0))
    assert fallback.randomize((10, 40)) == (0, 10, 10, 20)
    image = torch.arange(16.0).reshape(1, 4, 4)
    whole = RandResizedCropd("image", size=(4, 4), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(whole({"image": image})["image"], image)  # the full box at the same size is the identity
    out = RandResizedCropd(["image", "mask"], size=(6, 3))({"image": image, "mask": image.clone()})
    assert out["image"].shape == (1, 6, 3) and torch.equal(out["image"], out["mask"])  # one box for every key
    with pytest.raises(ValueError, match="scale"):
        RandResizedCropd("image", 8, scale=(0.5, 1.5))


def test_multi_view_stacks_independent_views_and_drops_the_source():
    image = torch.rand(1, 128, 128)
    views = MultiViewd("image", {"views": (2, contrastive_augmentations(size=32))})
    views.set_random_state(0)
    out = views({"image": image})
    assert set(out) == {"views"} and out["views"].shape == (2, 1, 32, 32) and type(out["views"]) is torch.Tensor
    assert not torch.equal(out["views"][0], out["views"][1])  # independent draws
    assert 0 <= out["views"].min() and out["views"].max() <= 1
    multi = MultiViewd(
        "image",
        {"global_views": (2, swav_augmentations(32)), "local_views": (3, swav_augmentations(16, (0.05, 0.14)))},
        keep_source=True,
    )
    out = multi({"image": image})
    assert out["global_views"].shape == (2, 1, 32, 32) and out["local_views"].shape == (3, 1, 16, 16)
    assert out["image"] is image
    again = MultiViewd("image", {"views": (2, contrastive_augmentations(size=32))}).set_random_state(0)
    assert torch.equal(again({"image": image})["views"], views.set_random_state(0)({"image": image})["views"])
