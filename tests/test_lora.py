"""LoRA adapters (common.lora): identity at init, what trains, exact merge, rank 0, parameter counts."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import SwinUNETR, ViT
from torch import nn

from common.lora import LoRAConv3d, LoRALinear, add_lora, describe_trainable, merge_lora, trainable_parameter_share


class ConvNet(nn.Module):
    """Encoder with a 3x3x3, a 1x1x1, a strided dilated replicate-padded and a depth-wise Conv3d, a norm and a
    channel-mixing Linear; a 1x1x1 conv head outside the encoder."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.ModuleDict(
            {
                "stem": nn.Conv3d(2, 8, 3, padding=1),
                "point": nn.Conv3d(8, 8, 1),
                "down": nn.Conv3d(8, 8, 3, stride=2, padding=2, dilation=2, padding_mode="replicate"),
                "depthwise": nn.Conv3d(8, 8, 5, padding=2, groups=8),
                "norm": nn.GroupNorm(2, 8),
                "mlp": nn.Linear(8, 8),
            }
        )
        self.head = nn.Conv3d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.encoder
        x = e["norm"](e["depthwise"](e["down"](e["point"](F.gelu(e["stem"](x))))))
        return self.head(x + e["mlp"](x.movedim(1, -1)).movedim(-1, 1))


class SwinNet(nn.Module):
    """SwinUNETR's encoder (``swinViT``, MONAI's ``SwinTransformer``) with a linear head on its last stage."""

    def __init__(self) -> None:
        super().__init__()
        swin_unetr = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, depths=(1, 1, 1, 1), window_size=4)
        self.swinViT = swin_unetr.swinViT
        self.head = nn.Linear(16 * 12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.swinViT(x)[-1].mean((2, 3, 4)))


class ViTNet(nn.Module):
    """MONAI's ``ViT`` (``SABlock`` / ``MLPBlock`` transformer blocks) with a 1x1x1 conv head on its token grid."""

    def __init__(self) -> None:
        super().__init__()
        self.vit = ViT(in_channels=1, img_size=16, patch_size=4, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2)
        self.head = nn.Conv3d(32, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit(x)[0]  # (N, 4 * 4 * 4, 32)
        return self.head(tokens.transpose(1, 2).reshape(-1, 32, 4, 4, 4))


# name -> (network factory, target, input shape): small networks with light heads, to keep the tests fast.
NETWORKS = {
    "convnet": (ConvNet, "encoder", (2, 2, 8, 8, 8)),
    "swin": (SwinNet, "swinViT", (1, 1, 16, 16, 16)),
    "vit": (ViTNet, "vit", (2, 1, 16, 16, 16)),
}
# Layers that must be adapted in each network (name suffixes, as in the issue).
EXPECTED_ADAPTED = {
    "convnet": ("encoder.stem", "encoder.point", "encoder.down", "encoder.depthwise", "encoder.mlp"),
    "swin": ("patch_embed.proj", "attn.qkv", "attn.proj", "mlp.linear1", "mlp.linear2", "downsample.reduction"),
    "vit": ("patch_embeddings", "attn.qkv", "attn.out_proj", "mlp.linear1", "mlp.linear2"),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: one thread avoids OpenMP spin-waits on the shared 2-core machine (5x faster)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _setup(name: str) -> tuple[nn.Module, str, torch.Tensor]:
    factory, target, shape = NETWORKS[name]
    torch.manual_seed(0)
    return factory(), target, torch.randn(shape)


def _is_lora_name(name: str) -> bool:
    return name.endswith((".lora_A", ".lora_B"))


@pytest.mark.parametrize("name", list(NETWORKS))
def test_adapted_network_equals_original_at_init(name: str) -> None:
    net, target, x = _setup(name)
    original = copy.deepcopy(net)
    assert add_lora(net, rank=4, target=target) is net

    adapted = {n for n, m in net.named_modules() if isinstance(m, (LoRALinear, LoRAConv3d))}
    for suffix in EXPECTED_ADAPTED[name]:
        assert any(n.endswith(suffix) for n in adapted), f"{suffix} not adapted"
    assert all(n.startswith(target + ".") for n in adapted)  # nothing outside the target
    with torch.no_grad():
        torch.testing.assert_close(net(x), original(x), atol=1e-6, rtol=0)


def test_full_swinunetr_equals_original_at_init() -> None:
    """The downstream network of the bundles, adapted on ``swinViT``; the decoder stays trainable and plain."""
    torch.manual_seed(0)  # group norm: instance norm rejects the 1^3 bottleneck of a 32^3 input
    net = SwinUNETR(
        in_channels=1,
        out_channels=3,
        feature_size=12,
        depths=(1, 1, 1, 1),
        window_size=4,
        norm_name=("group", {"num_groups": 3}),
    )
    original = copy.deepcopy(net)
    add_lora(net, rank=8, target="swinViT")
    assert not any(isinstance(m, (LoRALinear, LoRAConv3d)) for m in net.decoder1.modules())
    assert all(p.requires_grad for p in net.decoder1.parameters())
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), original(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_only_adapters_and_outside_parameters_get_gradients(name: str) -> None:
    net, target, x = _setup(name)
    add_lora(net, rank=4, target=target)
    net(x).square().mean().backward()

    for param_name, p in net.named_parameters():
        if param_name.startswith(target + ".") and not _is_lora_name(param_name):
            assert not p.requires_grad and p.grad is None, param_name
        else:
            assert p.requires_grad and p.grad is not None, param_name
    # B = 0 at init: the gradient of A (scale * B^T dL/dh x^T) is zero in the first step, that of B is not.
    assert all(not p.grad.any() for n, p in net.named_parameters() if n.endswith(".lora_A"))
    assert all(p.grad.any() for n, p in net.named_parameters() if n.endswith(".lora_B"))


def test_trainable_patterns_stay_trainable_inside_the_target() -> None:
    net, target, x = _setup("convnet")
    add_lora(net, rank=2, target=target, trainable=("encoder.norm",))
    net(x).sum().backward()
    norm = net.encoder["norm"]
    assert norm.weight.requires_grad and norm.weight.grad is not None
    assert not net.encoder["stem"].weight.requires_grad


@pytest.mark.parametrize("name", list(NETWORKS))
def test_merge_gives_plain_network_with_same_output_and_keys(name: str) -> None:
    net, target, x = _setup(name)
    original = copy.deepcopy(net)
    add_lora(net, rank=4, alpha=8, target=target)
    adapted = {n for n, m in net.named_modules() if isinstance(m, (LoRALinear, LoRAConv3d))}
    with torch.no_grad():
        for param_name, p in net.named_parameters():
            if param_name.endswith(".lora_B"):
                p.normal_(std=0.05)
    net(x).square().mean().backward()
    with torch.no_grad():  # one SGD step by hand (building a torch.optim optimizer imports torch._dynamo, ~3 s)
        for p in net.parameters():
            if p.requires_grad:
                p -= 0.1 * p.grad
        adapted_out = net(x)
        merged_out = merge_lora(net)(x)
        original_out = original(x)

    assert not any(isinstance(m, (LoRALinear, LoRAConv3d)) for m in net.modules())
    assert list(net.state_dict()) == list(original.state_dict())
    torch.testing.assert_close(merged_out, adapted_out, atol=1e-5, rtol=0)
    assert (merged_out - original_out).abs().max() > 1e-3
    merged, before = net.state_dict(), original.state_dict()
    changed = {k for k in before if k.startswith(target + ".") and not torch.equal(merged[k], before[k])}
    assert changed == {f"{n}.weight" for n in adapted}  # exactly the adapted weights took the update


def test_lora_update_follows_the_paper_equation() -> None:
    """``h = W0 x + b + (alpha / r) B A x`` for a Linear and for a 1x1x1 Conv3d (a Linear on each voxel)."""
    torch.manual_seed(0)
    linear, conv = nn.Linear(6, 5), nn.Conv3d(6, 5, 1)
    w0, b0 = linear.weight.detach().clone(), linear.bias.detach().clone()
    conv.weight.data.copy_(w0.view(5, 6, 1, 1, 1))
    conv.bias.data.copy_(b0)
    net = nn.ModuleDict({"linear": linear, "conv": conv})
    add_lora(net, rank=2, alpha=6)
    for layer in (linear, conv):
        layer.lora_A.data.copy_(torch.arange(12.0).view(2, 6) / 10)
        layer.lora_B.data.copy_(torch.arange(10.0).view(5, 2) / 10)
    expected_weight = w0 + 3.0 * linear.lora_B.detach() @ linear.lora_A.detach()
    x = torch.randn(4, 6)
    with torch.no_grad():
        torch.testing.assert_close(linear(x), x @ expected_weight.T + b0)
        voxels = conv(x.view(4, 6, 1, 1, 1)).view(4, 5)
    torch.testing.assert_close(voxels, x @ expected_weight.T + b0)


def test_state_dict_keeps_original_keys_and_adds_adapters() -> None:
    net, target, _ = _setup("convnet")
    pretrained = copy.deepcopy(net.state_dict())
    add_lora(net, rank=4, target=target)
    layers = ("stem", "point", "down", "depthwise", "mlp")
    adapters = {f"encoder.{layer}.{p}" for layer in layers for p in ("lora_A", "lora_B")}
    assert set(net.state_dict()) == set(pretrained) | adapters
    assert net.encoder["depthwise"].lora_A.shape == (4, 1 * 5 * 5 * 5)  # in / groups * kernel voxels
    result = net.load_state_dict(pretrained, strict=False)  # a pre-trained checkpoint still loads
    assert set(result.missing_keys) == adapters and not result.unexpected_keys


def test_rank_zero_is_a_no_op() -> None:
    net, target, _ = _setup("convnet")
    before = copy.deepcopy(net.state_dict())
    assert add_lora(net, rank=0, target=target) is net
    assert all(p.requires_grad for p in net.parameters())
    assert not any(isinstance(m, (LoRALinear, LoRAConv3d)) for m in net.modules())
    assert list(net.state_dict()) == list(before)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())


def test_invalid_calls_raise() -> None:
    net, target, _ = _setup("convnet")
    with pytest.raises(ValueError, match="rank"):
        add_lora(net, rank=-1, target=target)
    with pytest.raises(ValueError, match="no nn.Linear or nn.Conv3d"):
        add_lora(net, rank=4, target="encoder.norm")
    add_lora(net, rank=4, target=target)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        add_lora(net, rank=4, target=target)


def test_trainable_parameter_share_on_hand_countable_model(caplog: pytest.LogCaptureFixture) -> None:
    net = nn.Sequential(nn.Linear(8, 4))  # 8 * 4 + 4 = 36 parameters
    with caplog.at_level(logging.INFO, logger="common.lora"):
        add_lora(net, rank=2)
    assert trainable_parameter_share(net) == (2 * 8 + 4 * 2, 36 + 24)  # only A (2 x 8) and B (4 x 2) train
    assert "trainable 0.00 M of 0.00 M parameters (40.0 %)" in caplog.text

    big = add_lora(nn.Sequential(nn.Linear(1000, 1000)), rank=10)  # adapters 2 * 10 * 1000 of 1.021 M
    assert describe_trainable(big) == "trainable 0.02 M of 1.02 M parameters (2.0 %)"
