"""common.transfer.load_pretrained: matching by name and shape, wrapper prefixes, clear failures."""

import pytest
import torch
from torch import nn

from common.transfer import load_pretrained


def _net(out_features: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, out_features))


def test_loads_plain_state_dict(tmp_path):
    source, target = _net(), _net()
    torch.save(source.state_dict(), tmp_path / "model.pt")
    report = load_pretrained(target, tmp_path / "model.pt")
    assert len(report.matched) == 4 and not report.missing and not report.unexpected
    for a, b in zip(source.parameters(), target.parameters()):
        assert torch.equal(a, b)


def test_loads_training_state_with_ddp_prefix(tmp_path):
    source, target = _net(), _net()
    state = {"module." + k: v for k, v in source.state_dict().items()}
    torch.save({"model": state, "optimizer": {"state": {}}}, tmp_path / "checkpoint.pt")
    report = load_pretrained(target, tmp_path / "checkpoint.pt")
    assert len(report.matched) == 4
    assert torch.equal(target[0].weight, source[0].weight)


def test_head_with_other_shape_is_reported_not_loaded(tmp_path):
    source, target = _net(out_features=3), _net(out_features=5)
    before = target[2].weight.clone()
    torch.save(source.state_dict(), tmp_path / "model.pt")
    report = load_pretrained(target, tmp_path / "model.pt")
    assert sorted(report.missing) == ["2.bias", "2.weight"]
    assert len(report.shape_mismatch) == 2 and "(3, 8)" in report.shape_mismatch[0] + report.shape_mismatch[1]
    assert torch.equal(target[2].weight, before)
    assert torch.equal(target[0].weight, source[0].weight)


def test_exclude_prefix(tmp_path):
    source, target = _net(), _net()
    torch.save(source.state_dict(), tmp_path / "model.pt")
    report = load_pretrained(target, tmp_path / "model.pt", exclude=("2.",))
    assert sorted(report.unexpected) == ["2.bias", "2.weight"]
    assert not torch.equal(target[2].weight, source[2].weight)


def test_nothing_matches_raises(tmp_path):
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="no tensor of .* matches"):
        load_pretrained(_net(), tmp_path / "other.pt")


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(_net(), tmp_path / "absent.pt")
