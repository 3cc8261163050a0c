"""SwAV: Sinkhorn-Knopp codes, the swapped-prediction loss on hand-checked toys, the prototypes' normalisation and
freezing, and the method's outputs at small sizes (the bundle end to end: tests/test_contrastive_bundles.py)."""

import math

import pytest
import torch

from common.losses import SwAVLoss, sinkhorn_knopp
from common.methods import SwAV


def test_sinkhorn_one_iteration_by_hand():
    # epsilon 1 and scores log(M): Q^T = M = [[2, 1], [1, 1]] (prototypes x samples).
    # Prototype rows to 1: [[2/3, 1/3], [1/2, 1/2]]; sample columns to 1: sample 0 [4/7, 3/7], sample 1 [2/5, 3/5].
    scores = torch.tensor([[2.0, 1.0], [1.0, 1.0]]).log().t()
    codes = sinkhorn_knopp(scores, epsilon=1.0, iterations=1)
    torch.testing.assert_close(codes, torch.tensor([[4 / 7, 3 / 7], [2 / 5, 3 / 5]]))


def test_sinkhorn_codes_are_equipartitioned_over_the_prototypes():
    torch.manual_seed(0)
    batch, prototypes = 12, 4
    scores = torch.nn.functional.normalize(torch.randn(batch, prototypes), dim=1)
    scores[:, 0] += 1.0  # a prototype that every sample prefers
    plain = torch.softmax(scores / 0.05, dim=1)  # the same scores without equipartition: prototype 0 takes ~10 of 12
    assert (plain.sum(dim=0) - batch / prototypes).abs().max() > 7
    codes = sinkhorn_knopp(scores, epsilon=0.05, iterations=3)
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(batch))  # each sample: 1
    assert (codes.sum(dim=0) - batch / prototypes).abs().max() < 1  # each prototype: about B/K = 3
    converged = sinkhorn_knopp(scores, epsilon=0.05, iterations=50)
    torch.testing.assert_close(converged.sum(dim=0), torch.full((prototypes,), batch / prototypes), atol=5e-3, rtol=0)

def test_sinkhorn_is_invariant_to_a_shift_of_the_scores_and_rejects_other_shapes():
    scores = torch.randn(5, 3)
    torch.testing.assert_close(sinkhorn_knopp(scores, 0.05), sinkhorn_knopp(scores + 30.0, 0.05))
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        sinkhorn_knopp(torch.randn(2, 5, 3))


def test_sinkhorn_under_torch_distributed_matches_one_process(tmp_path):
    # a one-process gloo group runs the all-reduce path: the same codes as without a group
    scores = torch.randn(6, 4)
    expected = sinkhorn_knopp(scores)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.testing.assert_close(sinkhorn_knopp(scores), expected)
    finally:
        torch.distributed.destroy_process_group()


def _symmetric_scores(ratio: float) -> torch.Tensor:
    """Scores of 2 samples x 2 prototypes whose exp is [[r, 1], [1, r]] up to a factor: Sinkhorn leaves them
    balanced, so with epsilon 1 the codes equal softmax with temperature 1: [r/(r+1), 1/(r+1)] and its mirror."""
    half = math.log(ratio) / 2
    return torch.tensor([[half, -half], [-half, half]])


def test_swapped_prediction_loss_by_hand():
    # view 0: codes = predictions = [[2/3, 1/3], [1/3, 2/3]]; view 1: [[3/4, 1/4], [1/4, 3/4]].
    scores = torch.stack([_symmetric_scores(2.0), _symmetric_scores(3.0)], dim=1)  # (B=2, V=2, K=2)
    loss = SwAVLoss(temperature=1.0, epsilon=1.0, sinkhorn_iterations=3)(scores, assigned_views=2)
    view1_predicts_view0 = -(2 / 3 * math.log(3 / 4) + 1 / 3 * math.log(1 / 4))
    view0_predicts_view1 = -(3 / 4 * math.log(2 / 3) + 1 / 4 * math.log(1 / 3))
    assert loss.item() == pytest.approx((view1_predicts_view0 + view0_predicts_view1) / 2, rel=1e-5)


def test_swapped_prediction_averages_the_other_views_and_the_assigned_views():
    # 3 views, only view 0 assigned: its codes predicted by views 1 and 2, averaged over them.
    scores = torch.stack([_symmetric_scores(2.0), _symmetric_scores(3.0), _symmetric_scores(1.0)], dim=1)
    loss = SwAVLoss(temperature=1.0, epsilon=1.0)(scores, assigned_views=1)
    by_view1 = -(2 / 3 * math.log(3 / 4) + 1 / 3 * math.log(1 / 4))
    by_view2 = math.log(2)  # uniform predictions
    assert loss.item() == pytest.approx((by_view1 + by_view2) / 2, rel=1e-5)


def test_swapped_prediction_gradient_flows_through_the_predictions_only():
    scores = torch.randn(4, 3, 5, requires_grad=True)
    SwAVLoss()(scores, assigned_views=2).backward()
    # the codes carry no gradient: the scores' gradient is that of the cross-entropy with fixed targets
    codes = [sinkhorn_knopp(scores[:, view].detach()) for view in range(2)]
    log_p = torch.log_softmax(scores.detach() / 0.1, dim=-1).requires_grad_()
    expected = sum(-(codes[s][:, None] * torch.cat([log_p[:, :s], log_p[:, s + 1 :]], 1)).sum(-1).mean() for s in range(2)) / 2
    (grad_log_p,) = torch.autograd.grad(expected, log_p)
    probabilities = log_p.detach().exp()
    expected_grad = (grad_log_p - probabilities * grad_log_p.sum(-1, keepdim=True)) / 0.1
    torch.testing.assert_close(scores.grad, expected_grad)


def test_swapped_prediction_rejects_a_single_view():
    with pytest.raises(ValueError, match="at least 2 views"):
        SwAVLoss()(torch.randn(2, 1, 4))


def tiny_swav(**kwargs) -> SwAV:
    return SwAV(depth=18, hidden_features=32, embedding_dim=8, num_prototypes=6, **kwargs)


def multi_crop_batch(batch: int = 2) -> dict[str, torch.Tensor]:
    return {"global_views": torch.rand(batch, 2, 1, 32, 32), "local_views": torch.rand(batch, 3, 1, 16, 16)}


def test_forward_returns_the_loss_and_the_collapse_checks():
    torch.manual_seed(0)
    method = tiny_swav()
    output = method(multi_crop_batch())
    assert set(output) == {"loss", "loss/swav", "stat/embedding_std", "stat/prototype_entropy", "stat/prototypes_frozen"}
    assert output["loss"].shape == () and output["loss"].requires_grad and math.isfinite(output["loss"].item())
    assert 0 < output["stat/embedding_std"] < 1 and 0 < output["stat/prototype_entropy"] <= 1
    assert output["stat/prototypes_frozen"] == 1.0
    features = method.embed(multi_crop_batch()["local_views"])
    assert features.shape == (2, 3, 512)  # ResNet-18: 512 pooled channels


def test_global_views_only_is_enough():
    output = tiny_swav()({"global_views": torch.rand(2, 2, 1, 32, 32)})
    assert math.isfinite(output["loss"].item())


def test_prototypes_are_normalised_at_the_start_of_each_training_forward():
    method = tiny_swav()
    with torch.no_grad():
        method.prototypes.weight.mul_(3.0)
    method.eval()
    method(multi_crop_batch())
    assert not torch.allclose(method.prototypes.weight.norm(dim=1), torch.ones(6))  # evaluation leaves them
    method.train()
    method(multi_crop_batch())
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(6))


def test_prototypes_get_no_gradient_during_the_freeze_then_do():
    method = tiny_swav(freeze_prototypes_iterations=2)
    for iteration in range(3):
        method.zero_grad(set_to_none=True)
        output = method(multi_crop_batch())
        output["loss"].backward()
        frozen = iteration < 2
        assert output["stat/prototypes_frozen"] == float(frozen)
        assert (method.prototypes.weight.grad is None) == frozen
        assert method.projector[0].weight.grad is not None and method.encoder.conv1.weight.grad is not None
    assert int(method.iterations) == 3 and "iterations" in method.state_dict()


def test_state_dict_keys_outside_the_encoder_are_those_of_earlier_checkpoints():
    """The prototypes' module keeps ``nn.Linear``'s ``prototypes.weight`` and the method its ``iterations`` counter,
    so checkpoints saved before it existed, and tools/checkpoint_sources.py's mapping, still load."""
    keys = [key for key in tiny_swav().state_dict() if not key.startswith("encoder.")]
    projector = [f"projector.{i}.{name}" for i, name in [(0, "weight"), (0, "bias"), (1, "weight"), (1, "bias")]]
    batch_norm = [f"projector.1.{name}" for name in ("running_mean", "running_var", "num_batches_tracked")]
    assert keys == ["iterations", *projector, *batch_norm, "projector.3.weight", "projector.3.bias", "prototypes.weight"]


def test_encoder_state_dict_loads_into_the_downstream_resnet():
    from common.networks import resnet_classifier

    method = tiny_swav()
    encoder = {name[len("encoder.") :]: value for name, value in method.state_dict().items() if name.startswith("encoder.")}
    missing, unexpected = resnet_classifier(depth=18).load_state_dict(encoder, strict=False)
    assert unexpected == [] and set(missing) == {"fc.weight", "fc.bias"}

