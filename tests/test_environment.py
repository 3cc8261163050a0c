"""The environment report of ``python -m tools.environment``, also the first lines of ``python -m tools.verify``."""

import platform
from importlib import metadata
from types import SimpleNamespace

import monai
import pytest
import torch

from tools import environment, verify


def test_report_names_the_installed_versions():
    python, torch_line, monai_line, spconv, cumm = environment.environment_report()
    assert python == f"Python {platform.python_version()}"
    assert torch_line.startswith(f"torch {torch.__version__} (")
    available = "yes" if torch.cuda.is_available() else "no"
    assert f"available: {available}, {torch.cuda.device_count()} device" in torch_line
    assert monai_line == f"MONAI {monai.__version__}"
    for line, package in ((spconv, "spconv"), (cumm, "cumm")):
        if "not installed" not in line:
            name, version = line.split()
            assert name.startswith(package) and metadata.version(name) == version


def test_report_names_any_cuda_build_of_spconv_and_says_when_it_is_missing(monkeypatch):
    def distributions(*packages):
        return lambda: [SimpleNamespace(metadata={"Name": name}, version=version) for name, version in packages]

    monkeypatch.setattr(metadata, "distributions", distributions(("spconv-cu124", "2.3.8"), ("cumm_cu124", "0.7.11")))
    assert environment.environment_report()[3:] == ["spconv-cu124 2.3.8", "cumm-cu124 0.7.11"]
    monkeypatch.setattr(metadata, "distributions", distributions(("spconvx", "1.0")))
    assert environment.environment_report()[3:] == [
        "spconv not installed: the masked sparse back-end is used",
        "cumm not installed",
    ]


def test_environment_and_verify_print_the_report_first(tmp_path, capsys):
    report = environment.environment_report()
    environment.print_environment_report()
    assert capsys.readouterr().out.splitlines() == report
    with pytest.raises(SystemExit):
        verify.main(str(tmp_path / "missing"))
    out = capsys.readouterr().out.splitlines()
    assert out[: len(report)] == report and "FAIL" in out[len(report)]
