"""tools.label_efficiency: the pure parts (inputs, aggregation, tables) on fake records, and one tiny study end to
end (btcv ``smoke.json`` at 32^3, two fractions, scratch and a MiM checkpoint) read back from its MLflow store."""

import csv
import math
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from common.methods import MiM, method_spec
from common.networks import PRETRAINING_ARCHS, convvit_config
from tools.label_efficiency import BUNDLE, bundle_parser, label_efficiency, markdown_report, plot, study_methods
from tools.study import aggregate, checked_fractions, checked_seeds

FRACTIONS = (0.5, 1.0)
METHODS = ("scratch (mim)", "mim_pretrain")
ORGANS = ("val_dice_liver", "val_dice_spleen")


def fake_record(method: str, fraction: float, seed: int, dice: float) -> dict:
    return {"method": method, "arch": "mim", "fraction": fraction, "seed": seed, "train_cases": int(6 * fraction),
            "val_mean_dice": dice, "val_dice_liver": dice + 0.1, "val_dice_spleen": dice - 0.1}


# ------------------------------------------------------------------------------------------ fast


def test_aggregate_means_and_stds_over_seeds_in_first_seen_order():
    records = [fake_record("b", 0.5, 0, 0.4), fake_record("b", 0.5, 1, 0.6), fake_record("a", 1.0, 0, 0.7)]
    rows = aggregate(records, ["val_mean_dice", *ORGANS])
    assert [(row["method"], row["fraction"], row["seeds"]) for row in rows] == [("b", 0.5, 2), ("a", 1.0, 1)]
    assert rows[0]["val_mean_dice"] == pytest.approx(0.5) and rows[0]["val_dice_liver"] == pytest.approx(0.6)
    assert rows[0]["val_mean_dice_std"] == pytest.approx(math.sqrt(0.02))  # sample std (ddof=1) of 0.4, 0.6
    assert rows[0]["train_cases"] == 3 and math.isnan(rows[1]["val_mean_dice_std"])


def test_markdown_report_rows_per_method_best_in_bold_std_with_seeds():
    records = [fake_record(m, f, s, d + 0.01 * s) for m, d in (("a", 0.5), ("b", 0.6))
               for f in FRACTIONS for s in (0, 1)]
    report = markdown_report(aggregate(records, ["val_mean_dice", *ORGANS]), ORGANS)
    assert "| method | 50 % (3 cases) | 100 % (6 cases) |" in report
    assert "| a | 50.50 ± 0.71 | 50.50 ± 0.71 |" in report and "| b | **60.50 ± 0.71** |" in report
    assert "| method | liver | spleen | average |" in report and "at 100 % of the training cases" in report


def test_plot_draws_a_line_per_method(tmp_path):
    records = [fake_record(m, f, s, d * f + 0.02 * s)
               for m, d in (("a", 0.4), ("b", 0.8)) for f in (0.25, 0.5, 1.0) for s in (0, 1)]
    plot(aggregate(records, ["val_mean_dice", *ORGANS]), tmp_path / "plot.png")
    with Image.open(tmp_path / "plot.png") as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    for colour in ((31, 119, 180), (255, 127, 14)):  # matplotlib's first two: the legend alone has some 300 pixels
        assert (np.abs(pixels - colour).sum(-1) < 30).sum() > 1500


@pytest.mark.parametrize("fractions", [(0.0, 0.5), (0.5, 1.5), (), -0.1])
def test_fractions_outside_zero_one_fail_clearly(fractions):
    with pytest.raises(ValueError, match="fraction"):
        checked_fractions(fractions)


def test_fractions_and_seeds_accept_command_line_forms():
    assert checked_fractions("1.0,0.25,0.5,0.25") == (0.25, 0.5, 1.0)
    assert checked_fractions(0.5) == (0.5,)
    assert checked_seeds((0, 1, 1)) == (0, 1) and checked_seeds(3) == (3,)
    with pytest.raises(ValueError, match="whole numbers"):
        checked_seeds(0.5)


def test_methods_scratch_defaults_to_checkpoint_archs_and_sizes(tmp_path):
    """A scratch arm's encoder has the sizes the pre-trained checkpoint of its arch carries (MiM here); without a
    spec (a plain state dict, HySparK here) the bundle's own sizes apply to both arms."""
    encoder = {"widths": [6, 6, 12, 12], "depths": [1, 1, 1, 1], "num_heads": 2}
    spec = method_spec("MiM", {"encoder": encoder, "decoder_width": 12})
    torch.save({"model": {}, "network_spec": spec.state_dict()}, tmp_path / "mim_pretrain.pt")
    torch.save({}, tmp_path / "hyspark_pretrain.pt")
    entries = f"mim_pretrain={tmp_path / 'mim_pretrain.pt'},hyspark_pretrain={tmp_path / 'hyspark_pretrain.pt'}"
    methods = study_methods(entries, None)
    assert [(m.label, m.arch) for m in methods] == [
        ("scratch (mim)", "mim"), ("scratch (hyspark)", "hyspark"),
        ("mim_pretrain", "mim"), ("hyspark_pretrain", "hyspark")]
    assert [m.settings for m in methods] == [{"encoder_config": encoder}, {}, {}, {}]
    assert [m.label for m in study_methods(entries, ())] == ["mim_pretrain", "hyspark_pretrain"]
    assert [m.pretrained for m in study_methods((), "swin_unetr,swin_unetr")] == [None]


def test_bad_methods_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="nothing to compare"):
        study_methods((), None)
    with pytest.raises(ValueError, match="known: " + ", ".join(sorted(PRETRAINING_ARCHS))):
        study_methods(["mae_pretrain=x.pt"], None)
    with pytest.raises(ValueError, match="name=path"):
        study_methods(["mim_pretrain"], None)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        study_methods([f"mim_pretrain={tmp_path / 'missing.pt'}"], None)
    with pytest.raises(ValueError, match="unknown scratch arch 'resnet'"):
        study_methods((), ["resnet"])


def test_bad_inputs_fail_before_anything_is_written(tmp_path):
    output = tmp_path / "study"
    with pytest.raises(ValueError, match="fraction"):
        label_efficiency(scratch_archs="mim", fractions=(0.5, 2), output_dir=str(output))
    with pytest.raises(ValueError, match="--seed is set by the study"):
        label_efficiency(scratch_archs="mim", output_dir=str(output), seed=3)
    assert not output.exists()
    (output / "old").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="--resume"):
        label_efficiency(scratch_archs="mim", output_dir=str(output))


def test_overrides_are_checked_against_the_bundle_configuration():
    files = BUNDLE.config_files(["smoke.json"])
    parser = bundle_parser(files, {"max_epochs": 2, "train#trainer#epoch_length": 1})  # a new key in a section
    assert parser.get_parsed_content("max_epochs") == 2 and parser["train"]["trainer"]["epoch_length"] == 1
    with pytest.raises(ValueError, match="--max_epoch is no key"):
        bundle_parser(files, {"max_epoch": 2})
    with pytest.raises(ValueError, match="never validate"):
        bundle_parser(BUNDLE.config_files(()), {"max_epochs": 2})  # train.json validates every 14 epochs
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        BUNDLE.config_files(["nowhere.json"])


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    """A tiny study: scratch and MiM (CPU demo size), fractions 0.5 and 1.0, one seed, two iterations per run."""
    root = tmp_path_factory.mktemp("label_efficiency")
    torch.manual_seed(0)
    checkpoint = root / "mim.pt"
    mim = MiM(encoder=convvit_config(cpu_demo_scale=True), decoder_width=24, decoder_depth=1, decoder_heads=2,
              contrast_dim=16)
    torch.save(mim.state_dict(), checkpoint)
    arguments = dict(checkpoints=[f"mim_pretrain={checkpoint}"], fractions=FRACTIONS, seeds=(0,),
                     output_dir=str(root / "study"), configs=["smoke.json"], roi_size=[32, 32, 32], sw_overlap=0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 32^3 crops gain little from a second thread and lose much on a shared CPU
    try:
        paths = label_efficiency(**arguments)
    finally:
        torch.set_num_threads(threads)
    return {"paths": {key: Path(path) for key, path in paths.items()}, "arguments": arguments,
            "checkpoint": checkpoint, "output": root / "study"}


def _runs(output: Path) -> list:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{output / 'mlruns.db'}")
    return client.search_runs([client.get_experiment_by_name("btcv_segmentation").experiment_id])


@pytest.mark.slow
def test_study_writes_csv_markdown_and_plot(study):
    with open(study["paths"]["csv"]) as stream:
        rows = list(csv.DictReader(stream))
    assert [(row["method"], float(row["fraction"])) for row in rows] == [(m, f) for m in METHODS for f in FRACTIONS]
    dice = [key for key in rows[0] if key.startswith("val_") and not key.endswith("_std")]
    assert "val_mean_dice" in dice and "val_dice_liver" in dice and len(dice) == 14
    assert all(0.0 <= float(row[key]) <= 1.0 for row in rows for key in dice)
    assert all(row["seeds"] == "1" for row in rows)

    report = study["paths"]["md"].read_text()
    for method in METHODS:
        assert report.count(f"| {method} |") == 2  # the average table and the per-organ table
    assert "| method | 50 % (3 cases) | 100 % (6 cases) |" in report

    with Image.open(study["paths"]["png"]) as image:
        assert image.format == "PNG" and min(image.size) > 100
        assert len(image.convert("L").getcolors(1 << 16)) > 10  # drawn, not blank


@pytest.mark.slow
def test_mlflow_holds_one_finished_run_per_method_fraction_seed(study):
    runs = _runs(study["output"])
    keys = sorted((r.data.params["method"], float(r.data.params["train_fraction"]), r.data.params["seed"])
                  for r in runs)
    assert keys == sorted((m, f, "0") for m in METHODS for f in FRACTIONS)
    assert all(r.info.status == "FINISHED" for r in runs)
    params = {(r.data.params["method"], float(r.data.params["train_fraction"])): r.data.params for r in runs}
    assert params["mim_pretrain", 1.0]["pretrained"] == str(study["checkpoint"].resolve())
    assert params["scratch (mim)", 1.0]["pretrained"] == "None" and params["scratch (mim)", 1.0]["arch"] == "mim"
    for method in METHODS:  # half the fraction, half the training cases (of the demo's six)
        assert int(params[method, 0.5]["train_cases"]) == 3 < int(params[method, 1.0]["train_cases"]) == 6
    assert len(list(study["output"].glob("runs/*/checkpoint_final.pt"))) == 4


@pytest.mark.slow
def test_resume_skips_finished_runs(study):
    with pytest.raises(FileExistsError):
        label_efficiency(**study["arguments"])
    paths = label_efficiency(**study["arguments"], resume=True)
    assert len(_runs(study["output"])) == 4 and Path(paths["csv"]).is_file()
