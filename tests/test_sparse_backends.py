"""The sparse back-ends with and without spconv (Python >= 3.12 has no wheel of the pinned build): ``auto`` falls back
to ``masked`` with one warning naming the build to install, an explicit ``spconv`` is a clear error, ``masked`` runs."""

import logging
import sys

import pytest
import torch
from torch import nn

from common.masking import random_patch_mask, upsample_mask
from common.sparse import convert, encode_visible, resolve_backend, sparsify, spconv_available
from common.sparse.spconv_ops import spconv_install_command

INSTALL = r"pip install spconv-cu\d+==2\.3\.\d cumm-cu\d+==0\.\d+\.\d+"


@pytest.fixture
def without_spconv(monkeypatch):
    """spconv unimportable for one test, as when not installed (``None`` in ``sys.modules`` stops its import)."""
    monkeypatch.setitem(sys.modules, "spconv", None)
    monkeypatch.setitem(sys.modules, "spconv.pytorch", None)
    convert.auto_backend_on_cuda.cache_clear()
    yield
    convert.auto_backend_on_cuda.cache_clear()


def test_auto_runs_masked_without_spconv_and_warns_once(without_spconv, caplog):
    assert not spconv_available()
    with caplog.at_level(logging.WARNING, logger=convert.__name__):
        backends = [resolve_backend("auto", device) for device in ("cuda", "cuda:0", "cpu")]
    assert backends == ["masked"] * 3
    [warning] = [record.getMessage() for record in caplog.records if record.name == convert.__name__]
    assert "'masked' back-end" in warning
    assert spconv_install_command(torch.version.cuda) in warning


def test_explicit_spconv_without_spconv_is_an_error_naming_the_package(without_spconv):
    message = rf"the 'spconv' sparse back-end needs spconv.*{INSTALL}.*--sparse_backend masked"
    with pytest.raises(ImportError, match=message):
        resolve_backend("spconv", "cpu")
    encoder = sparsify(nn.Conv3d(1, 2, 3, padding=1))
    image, mask = torch.rand(1, 1, 4, 4, 4), torch.ones(1, 1, 2, 2, 2, dtype=torch.bool)
    with pytest.raises(ImportError, match=message):
        encode_visible(lambda x: [encoder(x)], image, mask, "spconv")


def test_masked_forward_and_backward_run_without_spconv(without_spconv):
    torch.manual_seed(0)
    encoder = sparsify(nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.GELU(), nn.MaxPool3d(2)))
    image = torch.rand(2, 1, 8, 8, 8)
    mask = random_patch_mask(2, (2, 2, 2), 0.5, generator=torch.Generator().manual_seed(0))
    [features] = encode_visible(lambda x: [encoder(x)], image, mask, resolve_backend("auto", "cuda"))
    hidden = ~upsample_mask(mask, features.shape[2:]).expand_as(features)
    assert features[hidden].abs().max() == 0 and features[~hidden].abs().max() > 0
    features.square().sum().backward()
    assert encoder[0].weight.grad.abs().sum() > 0


@pytest.mark.usefixtures("spconv_or_skip")
def test_auto_is_spconv_on_cuda_when_spconv_imports():
    convert.auto_backend_on_cuda.cache_clear()
    assert resolve_backend("auto", "cuda") == "spconv" and resolve_backend("auto", "cpu") == "masked"
    assert resolve_backend("spconv", "cpu") == "spconv"


@pytest.mark.parametrize(
    "cuda, python, command",
    [
        ("12.8", (3, 13), "spconv-cu126==2.3.8 cumm-cu126==0.7.11"),
        ("12.4", (3, 12), "spconv-cu124==2.3.8 cumm-cu124==0.7.11"),
        ("12.1", (3, 11), "spconv-cu121==2.3.8 cumm-cu121==0.7.11"),
        (None, (3, 11), "spconv-cu120==2.3.6 cumm-cu120==0.4.11"),
        (None, (3, 12), "spconv-cu121==2.3.8 cumm-cu121==0.7.11"),
    ],
)
def test_install_command_picks_the_newest_build_not_above_torchs_cuda(cuda, python, command, monkeypatch):
    monkeypatch.setattr(sys, "version_info", python)
    assert spconv_install_command(cuda) == f"pip install {command}"
