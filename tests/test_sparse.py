"""common.sparse: masked positions stay zero, the masked and spconv back-ends agree (values and gradients),
statistics use visible positions only, and without a mask a sparsified network is its dense self."""

import copy

import pytest
import torch
from torch import nn

from common.layers import ChannelsFirstLayerNorm
from common.masking import random_patch_mask, upsample_mask
from common.networks import HybridEncoder, MedNeXtEncoder
from common.sparse import encode_visible, resolve_backend, sparsify, visible_region
from common.sparse.tokens import to_tokens

# float32 through a few layers: the back-ends sum in different orders.
ATOL = 1e-5


def _tiny_hybrid():
    return HybridEncoder(channels=(4, 8, 8, 12, 12), depths=(1, 1, 2, 1, 1), num_heads=2, vit_depth=1)


class _Layers(nn.Module):
    """Every supported spatial layer in one encoder: full, depth-wise and strided convs, norms, pooling."""

    def __init__(self, dims: int):
        super().__init__()
        conv, bn, pool, inorm = (
            (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, nn.InstanceNorm3d)
            if dims == 3
            else (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.InstanceNorm2d)
        )
        self.stem = conv(2, 6, 3, padding=1)
        self.depthwise = conv(6, 6, 3, padding=1, groups=6)
        self.group_norm = nn.GroupNorm(3, 6)
        self.batch_norm = bn(6)
        self.layer_norm = ChannelsFirstLayerNorm(6)
        self.act = nn.GELU()
        self.pointwise = conv(6, 8, 1)
        self.pool = pool(2)
        self.instance_norm = inorm(8, affine=True)
        self.strided = conv(8, 8, 3, stride=2, padding=1, groups=8)
        self.strided_dense = conv(8, 4, 1, stride=2)

    def forward(self, x):
        x = self.act(self.layer_norm(self.batch_norm(self.group_norm(self.depthwise(self.stem(x))))))
        fine = self.pointwise(x)
        coarse = self.instance_norm(self.pool(fine))
        return [fine, coarse, self.strided(coarse), self.strided_dense(coarse)]


def _both_backends(encoder, image, mask):
    encoders = {"masked": encoder, "spconv": copy.deepcopy(encoder)}
    outputs, grads = {}, {}
    for name, enc in encoders.items():
        features = encode_visible(enc, image, mask, name)
        sum(f.square().sum() for f in features).backward()
        outputs[name] = features
        grads[name] = {n: p.grad for n, p in enc.named_parameters() if p.grad is not None}
    return outputs, grads


@pytest.mark.parametrize(
    "build, shape, grid",
    [
        (lambda: _Layers(3), (2, 2, 8, 8, 8), (2, 2, 2)),
        (lambda: _Layers(2), (2, 2, 16, 16), (4, 4)),
        (_tiny_hybrid, (2, 1, 32, 32, 32), (2, 2, 2)),
    ],
    ids=["layers3d", "layers2d", "hybrid"],
)
@pytest.mark.usefixtures("spconv_or_skip")
def test_backends_agree_and_masked_positions_stay_exactly_zero(build, shape, grid):
    torch.manual_seed(0)
    encoder = sparsify(build()).train()
    image = torch.randn(shape)
    mask = random_patch_mask(shape[0], grid, 0.5, generator=torch.Generator().manual_seed(1))
    outputs, grads = _both_backends(encoder, image, mask)
    for dense, sparse in zip(outputs["masked"], outputs["spconv"]):
        hidden = ~upsample_mask(mask, dense.shape[2:]).expand_as(dense)
        assert dense[hidden].abs().max() == 0 and sparse[hidden].abs().max() == 0
        torch.testing.assert_close(sparse, dense, atol=ATOL, rtol=1e-4)
    assert grads["masked"].keys() == grads["spconv"].keys() and grads["masked"]
    for name, grad in grads["masked"].items():
        torch.testing.assert_close(grads["spconv"][name], grad, atol=1e-4, rtol=1e-3, msg=name)


@pytest.mark.usefixtures("spconv_or_skip")
def test_visible_output_does_not_depend_on_masked_input():
    encoder = sparsify(_tiny_hybrid()).eval()
    image = torch.randn(1, 1, 32, 32, 32)
    mask = random_patch_mask(1, (2, 2, 2), 0.5, generator=torch.Generator().manual_seed(0))
    noisy = torch.where(upsample_mask(mask, image.shape[2:]), image, torch.randn_like(image) * 100)
    for backend in ("masked", "spconv"):
        with torch.no_grad():
            for a, b in zip(encode_visible(encoder, image, mask, backend), encode_visible(encoder, noisy, mask, backend)):
                torch.testing.assert_close(a, b)


@pytest.mark.parametrize("build", [_tiny_hybrid, lambda: MedNeXtEncoder("S")], ids=["hybrid", "mednext"])
def test_without_a_mask_the_sparse_encoder_is_exactly_the_dense_one(build):
    torch.manual_seed(0)
    dense = build().eval()
    sparse = sparsify(copy.deepcopy(dense))
    assert sparse.state_dict().keys() == dense.state_dict().keys()
    image = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        for a, b in zip(dense(image), sparse(image)):
            assert torch.equal(a, b)


def test_group_norm_statistics_come_from_visible_positions_only():
    norm = sparsify(nn.Sequential(nn.GroupNorm(2, 2, affine=False)))
    x = torch.randn(1, 2, 4, 4, 4) * 5 + 3
    mask = torch.zeros(1, 1, 2, 2, 2, dtype=torch.bool)
    mask[0, 0, 0, 0, 0] = mask[0, 0, 1, 1, 1] = True
    with visible_region(mask):
        out = norm(x)
    visible = upsample_mask(mask, (4, 4, 4))[0, 0]
    for c in range(2):
        values = x[0, c][visible]
        expected = (values - values.mean()) / torch.sqrt(values.var(unbiased=False) + norm[0].eps)
        torch.testing.assert_close(out[0, c][visible], expected)
        assert out[0, c][~visible].abs().max() == 0


def test_vit_stage_sees_exactly_the_visible_tokens_of_each_sample():
    x = torch.randn(3, 12, 6, 6, 6)
    mask = random_patch_mask(3, (6, 6, 6), 0.75)
    with visible_region(mask):
        tokens, positions, grid = to_tokens(x)
    assert tokens.shape == (3, 54, 12) and grid == (6, 6, 6)
    for b in range(3):
        expected = mask[b, 0].flatten().nonzero()[:, 0]
        assert torch.equal(positions[b], expected)
        assert torch.equal(tokens[b], x[b].flatten(1).T[expected])


def test_unsupported_layers_and_backends_are_clear_errors():
    with pytest.raises(NotImplementedError, match="ConvTranspose3d"):
        sparsify(nn.Sequential(nn.ConvTranspose3d(1, 1, 2, stride=2)))
    with pytest.raises(ValueError, match="sparse_backend"):
        resolve_backend("fast", "cpu")
