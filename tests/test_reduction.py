"""tools.reduction: the protocol (largest fraction first, the F1 stop rule, resume) against a fake fine-tuning that
logs MLflow runs, the aggregation, table and plot on hand-checked values, and one tiny study end to end
(``ct_slice_classification`` ``smoke.json`` on the demo slices, scratch and a SparK-shaped checkpoint, stopped by the
F1 rule after its first step)."""

import csv
import math
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from common.methods import method_spec
from common.networks import ResNetEncoder
from tools.reduction import (
    BUNDLE,
    METRICS,
    PRETRAINING_BUNDLES,
    every_method_below,
    markdown_report,
    reduction,
    run_reduction,
    study_methods,
    summary_rows,
    write_results,
)
from study_runs import log_run
from tools.study import Method, Store

SCRATCH, SPARK = Method("scratch"), Method("spark2d_pretrain", "/x/spark.pt")


def metrics_of(method: str, fraction: float, seed: int) -> dict[str, float]:
    """Toy test metrics: SparK's F1 holds up longer than scratch's; seeds 0 and 1 lie 0.02 apart; AUC = F1 + 0.05,
    accuracy = F1 - 0.05."""
    base = {"scratch": {1.0: 0.8, 0.5: 0.6, 0.25: 0.5, 0.1: 0.4},
            "spark2d_pretrain": {1.0: 0.9, 0.5: 0.75, 0.25: 0.65, 0.1: 0.6}}
    f1 = base[method][fraction] + 0.02 * seed
    return {"test_auc": f1 + 0.05, "test_f1": f1, "test_f1_macro": f1 + 0.01, "test_accuracy": f1 - 0.05}


class FakeFineTuning:
    """Logs one FINISHED run per call, as the bundle does: params and :func:`metrics_of`; ``fail`` lists run
    keys to end FAILED without metrics, as an interrupted run."""

    def __init__(self, store: Store, fail=()):
        self.store, self.fail, self.calls = store, set(fail), []

    def __call__(self, run) -> None:
        self.calls.append(run.key)
        log_run(self.store, run, None if run.key in self.fail else metrics_of(*run.key))


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    """One MLflow store for the fast tests (creating one costs seconds); each test is its own study."""
    return f"sqlite:///{tmp_path_factory.mktemp('reduction_store') / 'mlruns.db'}"


def record(method: str, fraction: float, seed: int) -> dict:
    return {"method": method, "fraction": fraction, "seed": seed, "train_images": int(40 * fraction),
            **metrics_of(method, fraction, seed)}


# ------------------------------------------------------------------------------------------ the protocol


def test_stop_rule_needs_every_method_below_the_threshold():
    rows = [{"method": "scratch", "test_f1": 0.69}, {"method": "spark2d_pretrain", "test_f1": 0.7}]
    assert not every_method_below(rows, 0.7)  # SparK reaches 0.7: go on
    assert every_method_below(rows, 0.71)
    assert not every_method_below(rows, 0.0)  # --min_f1 0 never stops


def test_largest_fraction_first_and_stop_once_every_method_is_below(uri):
    store = Store(uri, BUNDLE.name, "stop")
    fake = FakeFineTuning(store)
    records, left_out = run_reduction([SCRATCH, SPARK], (0.1, 0.5, 1.0, 0.25), (0, 1), fake, store)
    # at 25 %: scratch 0.51, SparK 0.66 (means over seeds 0, 1): both below 0.7, so 10 % is not run
    assert left_out == (0.1,)
    assert fake.calls == [(m, f, s) for f in (1.0, 0.5, 0.25) for m in ("scratch", "spark2d_pretrain") for s in (0, 1)]
    assert [(r["method"], r["fraction"], r["seed"]) for r in records] == fake.calls
    assert records[0] == {"method": "scratch", "fraction": 1.0, "seed": 0, "train_images": 40,
                          "test_auc": pytest.approx(0.85), "test_f1": pytest.approx(0.8),
                          "test_f1_macro": pytest.approx(0.81), "test_accuracy": pytest.approx(0.75)}


def test_no_stop_when_one_method_holds_up_or_at_the_last_fraction(uri):
    store = Store(uri, BUNDLE.name, "go on")
    fake = FakeFineTuning(store)
    _, left_out = run_reduction([SCRATCH, SPARK], (1.0, 0.5, 0.25), (0,), fake, store, min_f1=0.7)
    assert left_out == () and len(fake.calls) == 6  # 50 %: scratch 0.6, SparK 0.75; 25 %: both below, but last
    store = Store(uri, BUNDLE.name, "all below at the last")
    _, left_out = run_reduction([SCRATCH], (1.0, 0.5), (0,), FakeFineTuning(store), store, min_f1=0.9)
    assert left_out == (0.5,)  # 100 %: 0.8 < 0.9


def test_resume_trains_only_runs_not_finished_with_their_metrics(uri):
    store = Store(uri, BUNDLE.name, "resume")
    first = FakeFineTuning(store, fail={("spark2d_pretrain", 0.5, 1)})
    with pytest.raises(LookupError, match=r"spark2d_pretrain \| 50 % \| seed 1: no FINISHED run"):
        run_reduction([SCRATCH, SPARK], (1.0, 0.5), (0, 1), first, store)
    assert len(first.calls) == 8
    again = FakeFineTuning(store)
    records, _ = run_reduction([SCRATCH, SPARK], (1.0, 0.5), (0, 1), again, store, resume=True)
    assert again.calls == [("spark2d_pretrain", 0.5, 1)] and len(records) == 8
    other = Store(uri, BUNDLE.name, "another study")  # runs of other studies in the same store do not count
    fresh = FakeFineTuning(other)
    run_reduction([SCRATCH], (1.0,), (0,), fresh, other, resume=True)
    assert fresh.calls == [("scratch", 1.0, 0)]


# ------------------------------------------------------------------------------------------ results


def test_summary_means_and_sample_stds_method_by_method_largest_fraction_first():
    records = [record(m, f, s) for f in (1.0, 0.5) for m in ("spark2d_pretrain", "scratch") for s in (0, 1)]
    rows = summary_rows(records, [SCRATCH, SPARK])
    assert [(r["method"], r["fraction"]) for r in rows] == [
        ("scratch", 1.0), ("scratch", 0.5), ("spark2d_pretrain", 1.0), ("spark2d_pretrain", 0.5)]
    assert list(rows[0]) == ["method", "fraction", "train_images", "seeds", "test_auc", "test_auc_std",
                             "test_f1", "test_f1_std", "test_f1_macro", "test_f1_macro_std", "test_accuracy",
                             "test_accuracy_std"]
    assert rows[0]["train_images"] == 40 and rows[1]["train_images"] == 20 and rows[0]["seeds"] == 2
    assert rows[1]["test_f1"] == pytest.approx(0.61) and rows[1]["test_auc"] == pytest.approx(0.66)
    assert rows[1]["test_f1_std"] == pytest.approx(math.sqrt(0.0002))  # ddof=1: 0.6, 0.62 -> 0.01414
    one_seed = summary_rows([record("scratch", 1.0, 0)], [SCRATCH])
    assert math.isnan(one_seed[0]["test_f1_std"])


def test_markdown_tables_largest_fraction_first_best_in_bold_and_the_stop():
    records = [record(m, f, s) for f in (1.0, 0.5) for m in ("scratch", "spark2d_pretrain") for s in (0, 1)]
    report = markdown_report(summary_rows(records, [SCRATCH, SPARK]), left_out=(0.25, 0.1), min_f1=0.7)
    assert "| method | 100 % (40 images) | 50 % (20 images) |" in report
    assert "| scratch | 0.810 ± 0.014 | 0.610 ± 0.014 |" in report  # F1
    assert "| spark2d_pretrain | **0.910 ± 0.014** | **0.760 ± 0.014** |" in report
    assert "| spark2d_pretrain | **0.960 ± 0.014** | **0.810 ± 0.014** |" in report  # AUC
    assert [name in report for name in ("Test AUC.", "Test F1.", "Test accuracy.")] == [True] * 3
    assert "stopped after 50 %: every method's mean test F1 was below 0.7, so 25 %, 10 % were not run" in report
    complete = markdown_report(summary_rows(records, [SCRATCH, SPARK]), left_out=(), min_f1=0.7)
    assert "Every planned fraction was run" in complete and "5 seeds" not in complete and "2 seeds" in complete


def test_results_written_csv_markdown_and_a_band_per_method(tmp_path):
    records = [record(m, f, s) for f in (1.0, 0.5, 0.25) for m in ("scratch", "spark2d_pretrain") for s in (0, 1)]
    paths = write_results(summary_rows(records, [SCRATCH, SPARK]), (), 0.7, tmp_path)
    assert sorted(Path(p).name for p in paths.values()) == ["reduction.csv", "reduction.md", "reduction.png"]
    with open(paths["csv"]) as stream:
        rows = list(csv.DictReader(stream))
    assert [(r["method"], float(r["fraction"]), float(r["test_f1"])) for r in rows][:2] == [
        ("scratch", 1.0, pytest.approx(0.81)), ("scratch", 0.5, pytest.approx(0.61))]
    with Image.open(paths["png"]) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    assert image.size[0] > 1.8 * image.size[1]  # two panels side by side: F1 and AUC
    for colour in ((31, 119, 180), (255, 127, 14)):  # matplotlib's first two: lines and legends
        assert (np.abs(pixels - colour).sum(-1) < 30).sum() > 1500


# ------------------------------------------------------------------------------------------ inputs


def test_methods_scratch_first_unless_left_out(tmp_path):
    """The scratch ResNet has the depth the pre-trained checkpoints carry (BYOL's spec here; SparK's is a plain
    state dict)."""
    torch.save({}, tmp_path / "spark.pt")
    spec = method_spec("BYOL", {"depth": 18, "hidden_features": 32, "projection_dim": 8})
    torch.save({"model": {}, "network_spec": spec.state_dict()}, tmp_path / "byol.pt")
    entries = f"byol2d_pretrain={tmp_path / 'byol.pt'},spark2d_pretrain={tmp_path / 'spark.pt'}"
    assert [(m.label, m.pretrained) for m in study_methods(entries)] == [
        ("scratch", None), ("byol2d_pretrain", str(tmp_path / "byol.pt")),
        ("spark2d_pretrain", str(tmp_path / "spark.pt"))]
    assert study_methods(entries)[0].settings == {"network_spec#depth": 18}
    assert [m.label for m in study_methods(entries, no_scratch=True)] == ["byol2d_pretrain", "spark2d_pretrain"]
    assert all(m.arch is None for m in study_methods(entries))  # one network: ResNet-50
    with pytest.raises(ValueError, match="known: " + ", ".join(sorted(PRETRAINING_BUNDLES))):
        study_methods("mim_pretrain=x.pt")
    with pytest.raises(ValueError, match="nothing to compare"):
        study_methods((), no_scratch=True)


def test_bad_inputs_fail_before_anything_is_written(tmp_path):
    output = tmp_path / "study"
    with pytest.raises(ValueError, match="fraction"):
        reduction(fractions=(0.5, 2), output_dir=str(output))
    with pytest.raises(ValueError, match="whole numbers"):
        reduction(seeds=0.5, output_dir=str(output))
    if (BUNDLE.configs / "train.json").is_file():
        with pytest.raises(ValueError, match="--seed is set by the study"):
            reduction(output_dir=str(output), seed=3)
        with pytest.raises(ValueError, match="--max_epoch is no key"):
            reduction(output_dir=str(output), max_epoch=3)
    assert not output.exists()


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    """A tiny study on the demo slices: scratch and a SparK-shaped checkpoint (an encoder at random), one seed,
    one smoke iteration each; ``min_f1`` above any F1 stops it after 100 %, so 50 % is never run."""
    if not (BUNDLE.configs / "smoke.json").is_file():
        pytest.skip("bundles/ct_slice_classification is not there yet")
    root = tmp_path_factory.mktemp("reduction")
    torch.manual_seed(0)
    checkpoint = root / "spark.pt"
    encoder = ResNetEncoder(depth=50, spatial_dims=2)
    torch.save({f"encoder.{name}": value for name, value in encoder.state_dict().items()}, checkpoint)
    arguments = dict(checkpoints=[f"spark2d_pretrain={checkpoint}"], fractions=(1.0, 0.5), seeds=(0,),
                     min_f1=1.01, output_dir=str(root / "study"), configs=["smoke.json"], gradcam_images=1)
    paths = reduction(**arguments)
    return {"paths": {key: Path(path) for key, path in paths.items()}, "arguments": arguments,
            "checkpoint": checkpoint, "output": root / "study"}


def _runs(output: Path) -> list:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{output / 'mlruns.db'}")
    return client.search_runs([client.get_experiment_by_name(BUNDLE.name).experiment_id])


@pytest.mark.slow
def test_study_stops_after_the_first_step_and_writes_its_results(study):
    runs = _runs(study["output"])
    keys = sorted((r.data.params["method"], float(r.data.params["train_fraction"]), r.data.params["seed"])
                  for r in runs)
    assert keys == [("scratch", 1.0, "0"), ("spark2d_pretrain", 1.0, "0")]
    assert all(r.info.status == "FINISHED" and set(METRICS) <= set(r.data.metrics) for r in runs)
    params = {(r.data.params["method"], r.data.params["seed"]): r.data.params for r in runs}
    assert params["spark2d_pretrain", "0"]["pretrained"] == str(study["checkpoint"].resolve())
    assert params["scratch", "0"]["pretrained"] == "None"
    folders = sorted(path.name for path in study["output"].glob("runs/*"))
    assert folders == ["scratch_1_seed0", "spark2d_pretrain_1_seed0"]
    for folder in study["output"].glob("runs/*"):  # each fine-tuned model: its test metrics and Grad-CAM maps
        assert (folder / "test_metrics.json").is_file() and len(list((folder / "gradcam").glob("*.png"))) >= 1

    with open(study["paths"]["csv"]) as stream:
        rows = list(csv.DictReader(stream))
    assert [(r["method"], float(r["fraction"]), r["seeds"]) for r in rows] == [
        ("scratch", 1.0, "1"), ("spark2d_pretrain", 1.0, "1")]
    assert all(0.0 <= float(r[metric]) <= 1.0 for r in rows for metric in METRICS)
    assert rows[0]["train_images"] == params["scratch", "0"]["train_images"]
    report = study["paths"]["md"].read_text()
    assert report.count("| spark2d_pretrain |") == 4  # AUC, F1, macro F1, accuracy
    assert "stopped after 100 %" in report and "50 % were not run" in report
    with Image.open(study["paths"]["png"]) as image:
        assert image.format == "PNG" and len(image.convert("L").getcolors(1 << 16)) > 10


@pytest.mark.slow
def test_resume_skips_finished_runs(study):
    with pytest.raises(FileExistsError):
        reduction(**study["arguments"])
    paths = reduction(**study["arguments"], resume=True)
    assert len(_runs(study["output"])) == 2 and Path(paths["csv"]).is_file()
