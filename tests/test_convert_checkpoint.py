"""``tools.convert_checkpoint`` on synthetic files shaped like the official releases.

Each file follows the names and shapes of the authors' code (see :mod:`tools.checkpoint_sources`) with random
values, but HySparK's and MiM's fixed sin-cos position embeddings, which follow the official formulas (written out
here from the official code); where sizes are free the encoders are small (fewer blocks, ResNet-18), but documented
shapes are kept (HySparK's ``mae.pos_embed`` (1, 216, 384), GL-MAE's ``pos_embed`` (1, 217, 768)). The released files
themselves are not used (none can be downloaded here).
"""

from __future__ import annotations

import argparse
import logging
import warnings

import numpy as np
import pytest
import torch
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding

from common.layers import sincos_position_embedding
from common.networks import (
    CLASSIFICATION_ENCODER_RENAME,
    PRETRAINED_ENCODER_RENAME,
    classification_network,
    hybrid_config,
    resnet_classifier,
    segmentation_network,
)
from common.networks.mae_decoder import MAEDecoder
from common.networks.spec import SPEC_KEY, spec_from_state
from common.transfer import load_pretrained, pretrained_encoder_setting
from module_runner import run_module
from tools.checkpoint_sources import sincos_check
from tools.convert_checkpoint import BUNDLES_DIR, PINNED_CONFIG, ConversionError, convert_checkpoint, main
from tools.package import train_json_spec

UNUSED = ".norm_cross_attn."  # MONAI TransformerBlock's unused cross-attention norm


def rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


def timm_vit(prefix: str, width: int, depth: int, qkv_bias: bool = True) -> dict[str, torch.Tensor]:
    """timm ``Block`` s ``prefix<i>.*`` (MLP ratio 4)."""
    state = {}
    for i in range(depth):
        p = f"{prefix}{i}."
        state |= {
            p + "norm1.weight": rand(width), p + "norm1.bias": rand(width),
            p + "attn.qkv.weight": rand(3 * width, width),
            p + "attn.proj.weight": rand(width, width), p + "attn.proj.bias": rand(width),
            p + "norm2.weight": rand(width), p + "norm2.bias": rand(width),
            p + "mlp.fc1.weight": rand(4 * width, width), p + "mlp.fc1.bias": rand(4 * width),
            p + "mlp.fc2.weight": rand(width, 4 * width), p + "mlp.fc2.bias": rand(width),
        }  # fmt: skip
        if qkv_bias:
            state[p + "attn.qkv.bias"] = rand(3 * width)
    return state


def conv(prefix: str, c_out: int, c_in: int, *kernel: int) -> dict[str, torch.Tensor]:
    return {prefix + "weight": rand(c_out, c_in, *kernel), prefix + "bias": rand(c_out)}


def norm(prefix: str, width: int) -> dict[str, torch.Tensor]:
    return {prefix + "weight": rand(width), prefix + "bias": rand(width)}


def official_hyspark_sincos(side: int, width: int) -> torch.Tensor:
    """HySparK's ``build_3d_sincos_position_embedding`` (``models/network/hyspark_model.py``), ``(1, side^3, width)``:
    ``meshgrid(h, w, d)`` (``"ij"``), flattened, then sin / cos codes of h, of w, of d."""
    grid = torch.meshgrid(*(torch.arange(side, dtype=torch.float32),) * 3, indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(width // 6, dtype=torch.float32) / (width // 6))
    codes = [torch.einsum("m,d->md", axis.flatten(), omega) for axis in grid]
    return torch.cat([f(c) for c in codes for f in (torch.sin, torch.cos)], dim=1)[None]


def official_mim_sincos(side: int, width: int) -> torch.Tensor:
    """MiM's ``get_3d_sincos_pos_embed`` (``Pretrain/utils/MAE/pos_embed.py``, numpy), ``(1, side^3, width)``: its
    ``meshgrid2(w, h, d)`` reverses its arguments and spreads the k-th along axis k, i.e. ``meshgrid(d, h, w)``
    (``"ij"``); the three are reshaped to the grid and flattened, and coded in that order, each with
    ``width / 3`` channels: sines, then cosines of ``pos * 10000 ** (-k / (width / 6))``."""
    axis = np.arange(side, dtype=np.float32)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij")).reshape(3, 1, side, side, side)
    omega = 1.0 / 10000 ** (np.arange(width // 6, dtype=np.float32) / np.float32(width // 3 / 2))
    outs = [np.einsum("m,d->md", grid[a].reshape(-1), omega) for a in range(3)]
    return torch.from_numpy(np.concatenate([f(o) for o in outs for f in (np.sin, np.cos)], axis=1)).float()[None]


def added_position_embedding(module, first_block, *inputs, token_embed=None) -> torch.Tensor:
    """``(L, W)``: what ``module(*inputs)`` adds to its tokens before ``first_block``, in the network's token order
    (read with the tokens zero: ``inputs`` zero, or ``token_embed``'s output made zero)."""
    seen = []
    hooks = [first_block.register_forward_pre_hook(lambda block, args: seen.append(args[0][0]))]
    if token_embed is not None:
        hooks.append(token_embed.register_forward_hook(lambda layer, args, out: torch.zeros_like(out)))
    with torch.no_grad():
        module(*inputs)
    for hook in hooks:
        hook.remove()
    return seen[0]


def hyspark_release() -> dict[str, torch.Tensor]:
    """HySparK's ``sparse_encoder.state_dict()`` at the paper's sizes (``hyspark_model.Encoder``)."""
    channels, depths, ratios = (32, 64, 128, 256, 384), (1, 1, 3, 3, 1), (2, 4, 4, 4, 2)
    state = conv("embeddings.stem.", 32, 1, 3, 3, 3)
    for k, (c, d, r) in enumerate(zip(channels, depths, ratios), start=1):
        for j in range(d):
            p = f"embeddings.layer{k}.{j}."
            state |= conv(p + "conv1.", c, 1, 3, 3, 3) | norm(p + "norm.", c)
            state |= conv(p + "conv2.", r * c, c, 1, 1, 1) | conv(p + "conv3.", c, r * c, 1, 1, 1)
    for k in range(1, 5):
        state |= conv(f"embeddings.expend{k}.", channels[k], channels[k - 1], 3, 3, 3)
    state |= timm_vit("mae.blocks.", 384, 3) | norm("mae.norm.", 384)
    state |= {"mae.pos_embed": official_hyspark_sincos(6, 384), "mae.mask_token": rand(1, 1, 384)}
    return state


def batch_norm(prefix: str, width: int) -> dict[str, torch.Tensor]:
    return {
        prefix + "weight": rand(width), prefix + "bias": rand(width), prefix + "running_mean": rand(width),
        prefix + "running_var": rand(width).abs() + 0.5, prefix + "num_batches_tracked": torch.tensor(7),
    }  # fmt: skip


def torchvision_resnet18(prefix: str = "") -> dict[str, torch.Tensor]:
    """A torchvision / timm / lightning-bolts ResNet-18 with an RGB stem, without ``fc``."""
    state = {prefix + "conv1.weight": rand(64, 3, 7, 7)} | batch_norm(prefix + "bn1.", 64)
    c_in = 64
    for stage, width in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p = f"{prefix}layer{stage}.{block}."
            state |= {p + "conv1.weight": rand(width, c_in, 3, 3)} | batch_norm(p + "bn1.", width)
            state |= {p + "conv2.weight": rand(width, width, 3, 3)} | batch_norm(p + "bn2.", width)
            if block == 0 and c_in != width:
                state |= {p + "downsample.0.weight": rand(width, c_in, 1, 1)} | batch_norm(p + "downsample.1.", width)
            c_in = width
    return state


def linear(prefix: str, c_out: int, c_in: int, bias: bool = True) -> dict[str, torch.Tensor]:
    return {prefix + "weight": rand(c_out, c_in)} | ({prefix + "bias": rand(c_out)} if bias else {})


def assert_values_carried(release: dict, converted: dict, report) -> None:
    """Every converted tensor that was not adapted equals its release tensor."""
    for old, new in report.renamed.items():
        if old not in report.adapted:
            assert torch.equal(converted[new], release[old]), f"{old} -> {new} changed value"


def assert_encoder_loaded(network: torch.nn.Module, path, rename: dict, prefixes: str | tuple[str, ...]) -> None:
    """``load_pretrained`` fills every tensor of ``network`` under ``prefixes`` (but MONAI's unused norms)."""
    report = load_pretrained(network, path, rename=rename)
    expected = [n for n in network.state_dict() if n.startswith(prefixes) and UNUSED not in n]
    assert expected and not [n for n in expected if n not in report.matched]
    assert not report.shape_mismatch


def test_hyspark_release_converts_into_the_encoder(tmp_path, caplog):
    torch.manual_seed(0)
    release = hyspark_release()
    source, out = tmp_path / "hyspark.pth", tmp_path / "converted.pt"
    torch.save(release, source)
    with caplog.at_level(logging.WARNING):
        report = convert_checkpoint("hyspark", source, out, overrides={"decoder_width": 96})
    converted = torch.load(out, weights_only=True)["model"]
    assert report.complete and len(report.matched) == len(release) - 2 and "encoder.vit.norm.bias" in report.matched
    assert set(report.dropped) == {"mae.pos_embed", "mae.mask_token"}
    assert converted["encoder.vit.blocks.1.attn.out_proj.weight"].equal(release["mae.blocks.1.attn.proj.weight"])
    assert converted["encoder.stages.2.2.conv2.weight"].equal(release["embeddings.layer3.2.conv2.weight"])
    assert converted["encoder.widen.3.bias"].equal(release["embeddings.expend4.bias"])
    assert_values_carried(release, converted, report)
    assert not report.warnings and "WARNING" not in caplog.text  # the official sin-cos embedding: nothing to warn
    assert report.dropped["mae.pos_embed"].endswith("compared: equal to it at every token")

    method = train_json_spec(BUNDLES_DIR / "hyspark_pretrain", {"decoder_width": 96}, PINNED_CONFIG).build()
    result = method.load_state_dict(converted, strict=False)
    assert not result.unexpected_keys
    assert all(not n.startswith("encoder.") or UNUSED in n for n in result.missing_keys)
    network = segmentation_network("hyspark", out_channels=3)
    assert_encoder_loaded(network, out, PRETRAINED_ENCODER_RENAME["hyspark"], "encoder.")
    # the fine-tuning ViT adds at each token of the 6^3 grid (raster order, as the official flatten(2)) the release's
    vit = network.encoder.vit
    added = added_position_embedding(vit, vit.blocks[0], torch.zeros(1, 384, 6, 6, 6))
    assert torch.allclose(added, release["mae.pos_embed"][0], rtol=0, atol=1e-6)
    # the release's sizes travel with it: fine-tuning builds the paper's encoder whatever the machine's default
    assert pretrained_encoder_setting(out, {"channels": [8]}, ["HySparK"]) == hybrid_config(cpu_demo_scale=False)


def test_sincos_check_passes_the_official_embeddings_and_names_others():
    check = sincos_check()
    assert check(official_hyspark_sincos(6, 384)) is None and check(official_mim_sincos(4, 96)) is None
    monai = build_sincos_position_embedding([6, 6, 6], 384, spatial_dims=3).detach()
    assert "grid axes 0 and 1 exchanged (MONAI's" in check(monai)
    assert "differs from the sin-cos embedding" in check(torch.rand(1, 216, 384))
    assert "not a cubic grid" in check(torch.rand(1, 100, 384))


@pytest.mark.parametrize(("grid", "width"), [((5, 7), 20), ((3, 5, 7), 30)])  # sizes no network caches
def test_sincos_position_embedding_is_monais_with_the_first_two_axes_bands_exchanged(grid, width, monkeypatch):
    """MONAI codes grid axis 1 first, then 0 (then 2); ours axis 0, 1 (, 2), on any grid. torch warns about a
    meshgrid without ``indexing`` once per process, so the call's arguments are checked."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.meshgrid")
        monai = build_sincos_position_embedding(list(grid), width, spatial_dims=len(grid))[0].detach()
    axis_1, axis_0, *others = monai.split(width // len(grid), dim=1)
    meshgrid, calls = torch.meshgrid, []
    monkeypatch.setattr(torch, "meshgrid", lambda *axes, **kwargs: calls.append(kwargs) or meshgrid(*axes, **kwargs))
    ours = sincos_position_embedding(grid, width, "cpu")
    assert torch.equal(ours, torch.cat((axis_0, axis_1, *others), dim=1)) and calls == [{"indexing": "ij"}]
    cell = (1, 2, 3)[: len(grid)]  # band 0 codes the coordinate on axis 0: sin(1 * 10000^0) in its first channel
    assert ours[int(np.ravel_multi_index(cell, grid)), 0] == torch.sin(torch.tensor(1.0))


def test_a_release_missing_encoder_blocks_is_refused_unless_partial_is_allowed(tmp_path):
    torch.manual_seed(1)
    release = {k: v for k, v in hyspark_release().items() if not k.startswith("mae.blocks.2.")}
    source, out = tmp_path / "hyspark.pth", tmp_path / "converted.pt"
    torch.save(release, source)
    with pytest.raises(ConversionError, match="--allow_partial") as refused:
        convert_checkpoint("hyspark", source, out, overrides={"decoder_width": 96})
    assert not out.exists()
    assert "encoder.vit.blocks.2.attn.qkv.weight" in refused.value.report.missing
    report = convert_checkpoint("hyspark", source, out, allow_partial=True, overrides={"decoder_width": 96})
    assert out.is_file() and report.missing == refused.value.report.missing


MIM_OVERRIDES = {
    "convvit_config": {"widths": [48, 96, 192, 384], "depths": [1, 1, 1, 2], "num_heads": 12},
    "decoder_width": 96, "decoder_depth": 1, "decoder_heads": 4, "contrast_dim": 32,
}  # fmt: skip


def mim_release() -> dict[str, torch.Tensor]:
    """MiM's ``MaskedAutoencoderConvViT3d`` (``models_convmae3d_v4.py``), paper widths, one block per stage."""
    widths, state = (48, 96, 192, 384), {}
    for k, (c_in, c_out) in enumerate(zip((1, *widths), widths), start=1):
        state |= conv(f"patch_embed{k}.proj.", c_out, c_in, 2, 2, 2) | norm(f"patch_embed{k}.norm.", c_out)
    state |= linear("patch_embed5.", 384, 384)
    for k, c in enumerate(widths[:3], start=1):
        state |= conv(f"stage{k}_output_decode.", 384, c, *(2 ** (4 - k),) * 3)
        p = f"blocks{k}.0."
        state |= norm(p + "norm1.", c) | conv(p + "conv1.", c, c, 1, 1, 1) | conv(p + "attn.", c, 1, 5, 5, 5)
        state |= conv(p + "conv2.", c, c, 1, 1, 1) | norm(p + "norm2.", c)
        state |= conv(p + "mlp.fc1.", 4 * c, c, 1, 1, 1) | conv(p + "mlp.fc2.", c, 4 * c, 1, 1, 1)
    state |= timm_vit("blocks4.", 384, 2) | norm("norm.", 384) | {"pos_embed": official_mim_sincos(6, 384)}
    state |= linear("decoder_embed.", 96, 384) | {"mask_token": rand(1, 1, 96)}
    state["decoder_pos_embed"] = official_mim_sincos(6, 96)
    state |= timm_vit("decoder_blocks.", 96, 1) | norm("decoder_norm.", 96) | linear("decoder_pred.", 16**3, 96)
    return state


def test_mim_pickled_release_needs_trust_and_converts(tmp_path, caplog):
    torch.manual_seed(2)
    release = mim_release()
    source, out = tmp_path / "mim.pth", tmp_path / "converted.pt"
    torch.save({"model": release, "args": argparse.Namespace(mask_ratio=0.6)}, source)
    with pytest.raises(ConversionError, match="--trust_pickle") as refused:
        convert_checkpoint("mim", source, out, overrides=MIM_OVERRIDES)
    assert "argparse.Namespace" in str(refused.value) and not out.exists()

    with caplog.at_level(logging.WARNING):
        report = convert_checkpoint("mim", source, out, trust_pickle=True, overrides=MIM_OVERRIDES)
    assert "weights_only=False" in caplog.text
    converted = torch.load(out, weights_only=True)["model"]
    assert report.complete and set(report.dropped) == {"pos_embed", "decoder_pos_embed"} and not report.warnings
    assert converted["encoder.conv_stages.1.0.dwconv.weight"].equal(release["blocks2.0.attn.weight"])
    assert converted["encoder.patch_embeds.3.1.bias"].equal(release["patch_embed4.norm.bias"])
    assert converted["encoder.stage_projections.0.weight"].equal(release["stage1_output_decode.weight"])
    assert converted["decoder.predict.weight"].equal(release["decoder_pred.weight"])
    assert_values_carried(release, converted, report)
    encoder = MIM_OVERRIDES["convvit_config"]
    network = segmentation_network("mim", out_channels=3, feature_size=12, encoder_config=encoder)
    assert_encoder_loaded(network, out, PRETRAINED_ENCODER_RENAME["mim"], "encoder.")
    # encoder and decoder add at each token of the 6^3 grid (raster order, as the official flatten(2)) the release's
    vit = network.encoder
    added = added_position_embedding(vit, vit.blocks[0], torch.zeros(1, 1, 96, 96, 96), token_embed=vit.token_embed)
    assert torch.allclose(added, release["pos_embed"][0], rtol=0, atol=1e-6)
    decoder = MAEDecoder(384, width=96, depth=1, num_heads=4)  # the embedding depends on the grid and width only
    latent, visible = torch.zeros(1, 384, 6, 6, 6), torch.ones(1, 1, 6, 6, 6, dtype=torch.bool)
    added = added_position_embedding(decoder, decoder.blocks[0], latent, visible, token_embed=decoder.embed)
    assert torch.allclose(added, release["decoder_pos_embed"][0], rtol=0, atol=1e-6)


GLMAE_VIT = {"hidden_size": 768, "mlp_dim": 3072, "num_layers": 2, "num_heads": 12}


def test_glmae_release_is_partial_without_qkv_biases_and_folds_the_cls_position(tmp_path):
    torch.manual_seed(3)
    backbone = {"cls_token": rand(1, 1, 768), "pos_embed": rand(1, 217, 768)}
    backbone |= conv("patch_embed.proj.", 768, 1, 16, 16, 16) | timm_vit("blocks.", 768, 2) | norm("norm.", 768)
    student = {f"module.backbone.{k}": v for k, v in backbone.items()}
    source, out = tmp_path / "glmae.pth", tmp_path / "converted.pt"
    torch.save({"student": student, "teacher": student, "epoch": torch.tensor(800)}, source)
    overrides = {"vit_config": GLMAE_VIT, "decoder_width": 96, "decoder_depth": 1, "decoder_heads": 4}
    overrides["head_hidden"] = 64

    with pytest.raises(ConversionError, match="qkv.bias"):
        convert_checkpoint("glmae", source, out, overrides=overrides)
    report = convert_checkpoint("glmae", source, out, allow_partial=True, overrides=overrides)
    assert len(report.unexpected) == 2 and all(".attn.qkv.bias ->" in u for u in report.unexpected)
    assert not report.missing and not report.shape_mismatch
    converted = torch.load(out, weights_only=True)["model"]
    position = converted["encoder.vit.patch_embedding.position_embeddings"]
    assert position.shape == (1, 216, 768) and position.equal(backbone["pos_embed"][:, 1:])
    assert converted["encoder.cls_token"].equal(backbone["cls_token"] + backbone["pos_embed"][:, :1])
    assert_values_carried({f"backbone.{k}": v for k, v in backbone.items()}, converted, report)
    classifier = classification_network("vit", num_classes=2, encoder_config={"num_layers": 2})
    assert_encoder_loaded(classifier, out, CLASSIFICATION_ENCODER_RENAME["vit"], "encoder.")


def two_d_release(source: str) -> tuple[dict, dict, dict]:
    """(checkpoint, its flat release state, overrides) of a ResNet-18 release of ``source``."""
    if source == "spark2d":
        state = torchvision_resnet18() | linear("fc.", 1000, 512)
        return {"module": state}, state, {"depth": 18}
    if source == "moco2d":
        state = {}
        for arm in ("encoder_q.", "encoder_k."):
            state |= torchvision_resnet18(arm) | linear(arm + "fc.0.", 512, 512) | linear(arm + "fc.2.", 128, 512)
        state |= {"queue": rand(128, 256), "queue_ptr": torch.tensor([64]), "val_queue": rand(128, 256),
                  "val_queue_ptr": torch.tensor([0])}  # fmt: skip
        overrides = {"depth": 18, "hidden_features": 512, "queue_size": 256}
    elif source == "byol2d":
        state = {}
        for arm in ("online_network.", "target_network."):
            state |= torchvision_resnet18(arm + "encoder.")
            for mlp, width in (("projector", 512), ("predictor", 32)):
                p = f"{arm}{mlp}.model."
                state |= linear(p + "0.", 64, width, bias=False) | batch_norm(p + "1.", 64) | linear(p + "3.", 32, 64)
        overrides = {"depth": 18, "hidden_features": 64, "projection_dim": 32}
    else:
        state = torchvision_resnet18("model.") | linear("model.projection_head.0.", 64, 512)
        state |= batch_norm("model.projection_head.1.", 64) | linear("model.projection_head.3.", 128, 64)
        state |= linear("model.prototypes.", 500, 128, bias=False)
        overrides = {"depth": 18, "hidden_features": 64}
    lightning = {"state_dict": state, "epoch": 99, "global_step": 1234, "pytorch-lightning_version": "1.8.6"}
    return lightning, state, overrides


STEMS = {"spark2d": "conv1.weight", "moco2d": "encoder_q.conv1.weight", "byol2d": "online_network.encoder.conv1.weight",
         "swav2d": "model.conv1.weight"}  # fmt: skip


@pytest.mark.parametrize("source", ["spark2d", "moco2d", "byol2d", "swav2d"])
def test_2d_study_release_converts_into_the_resnet_encoder(tmp_path, source):
    torch.manual_seed(4)
    checkpoint, release, overrides = two_d_release(source)
    path, out = tmp_path / "release.ckpt", tmp_path / "converted.pt"
    torch.save(checkpoint, path)
    report = convert_checkpoint(source, path, out, overrides=overrides)
    converted = torch.load(out, weights_only=True)["model"]
    assert report.complete
    assert converted["encoder.conv1.weight"].equal(release[STEMS[source]].sum(dim=1, keepdim=True))
    assert_values_carried(release, converted, report)
    assert_encoder_loaded(resnet_classifier(18, num_classes=3), out, {"encoder.": ""}, ("conv1.", "bn1.", "layer"))
    dropped = {
        "spark2d": {"fc.weight", "fc.bias"},
        "moco2d": {"val_queue", "val_queue_ptr"},
        "byol2d": {n for n in release if n.startswith("target_network.predictor.")},
        "swav2d": set(),
    }
    assert set(report.dropped) == dropped[source]
    if source == "moco2d":
        assert converted["queue.keys"].equal(release["queue"].t()) and converted["queue.pointer"].item() == 64
    # the release's input normalisation travels with it (ImageNet's for SparK, the study's fixed LIDC statistics for
    # the contrastive methods), not statistics of whatever data the bundle's default points to
    spec = spec_from_state(torch.load(out, weights_only=True)[SPEC_KEY], str(out))
    expected = [0.449, 0.226] if source == "spark2d" else [0.1806, 0.1907]
    assert spec.preprocessing["intensity"] == pytest.approx(expected)


def test_a_release_of_other_sizes_is_refused_with_the_shapes(tmp_path):
    torch.manual_seed(5)
    checkpoint, release, overrides = two_d_release("swav2d")
    release["model.prototypes.weight"] = rand(3000, 128)
    path, out = tmp_path / "swav.ckpt", tmp_path / "converted.pt"
    torch.save(checkpoint, path)
    with pytest.raises(ConversionError, match="another shape"):
        convert_checkpoint("swav2d", path, out, overrides=overrides)
    report = convert_checkpoint("swav2d", path, out, overrides=overrides, allow_partial=True)
    mismatch = "model.prototypes.weight -> prototypes.weight: release (3000, 128), SwAV (500, 128)"
    assert report.shape_mismatch == [mismatch]
    assert "prototypes.weight" not in torch.load(out, weights_only=True)["model"]


def test_unknown_source_and_override_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown --source 'simclr'; choose one of hyspark, mim, glmae"):
        convert_checkpoint("simclr", tmp_path / "in.pth", tmp_path / "out.pt")
    torch.save(hyspark_release(), tmp_path / "hyspark.pth")
    with pytest.raises(ValueError, match="'vit_depth' is not an id of .*hyspark_pretrain"):
        convert_checkpoint("hyspark", tmp_path / "hyspark.pth", tmp_path / "out.pt", overrides={"vit_depth": 2})


def test_command_line_converts_and_never_overwrites(tmp_path, repo_root):
    torch.manual_seed(6)
    source, out = tmp_path / "hyspark.pth", tmp_path / "converted.pt"
    release = hyspark_release() | {"mae.pos_embed": rand(1, 216, 384)}  # not a sin-cos code: reported
    torch.save(release, source)
    done = run_module("tools.convert_checkpoint", "--source", "hyspark", str(source), str(out),
                      "--overrides", "{'decoder_width': 96}", cwd=repo_root)
    assert done.returncode == 0, done.stderr
    converted = len(release) - 2  # all but the fixed position embedding and the unused ViT mask token
    assert f"hyspark -> HySparK: {converted} tensors converted" in done.stdout and f"wrote {out}" in done.stdout
    assert "WARNING: " in done.stderr and "mae.pos_embed: differs" in done.stderr
    assert len(torch.load(out, weights_only=True)["model"]) == converted
    with pytest.raises(SystemExit, match="exists; pass --overwrite"):
        main(str(source), str(out), source="hyspark")
