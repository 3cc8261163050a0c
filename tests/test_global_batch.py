"""The global batch of a recipe (common.engine.global_batch): accumulation derived from it and the world size, in
the functions and in every pre-training bundle's config. The multi-process runs are in tests/test_multi_gpu.py."""

import pytest
from monai.bundle import ConfigParser

from common.engine.global_batch import accumulation_steps, world_size
from conftest import REPO_ROOT

PRETRAINING_BUNDLES = sorted(
    path.parent.parent.name for path in REPO_ROOT.glob("bundles/*_pretrain/configs/train.json")
)
# samples per optimizer step that each paper states (HySparK Sec. 3.2, MiM Table II, GL-MAE "Pre-training setting",
# Wolf et al. Tables 4-7); the baselines SparK-3D and MAE3D take the setting of the paper that runs them (HySparK's,
# GL-MAE's; tests/test_recipes.py)
PAPER_GLOBAL_BATCH = {"hyspark_pretrain": 8, "spark3d_pretrain": 8, "mim_pretrain": 256, "glmae_pretrain": 256,
                      "mae3d_pretrain": 256, "spark2d_pretrain": 32, "moco2d_pretrain": 64, "byol2d_pretrain": 64,
                      "swav2d_pretrain": 128}


@pytest.mark.parametrize(
    "global_batch, batch, samples, processes, expected",
    [(8, 1, 4, 1, 2), (8, 1, 1, 8, 1), (256, 4, 2, 1, 32), (256, 4, 2, 8, 4), (256, 4, 1, 32, 2), (64, 64, 1, 1, 1)],
)
def test_accumulation_keeps_the_global_batch(global_batch, batch, samples, processes, expected):
    steps = accumulation_steps(global_batch, batch, samples, processes)
    assert steps == expected and batch * samples * steps * processes == global_batch


def test_a_world_size_that_cannot_keep_the_global_batch_is_an_error_naming_the_batch_sizes_that_can():
    with pytest.raises(ValueError, match=r"cannot be kept on 3 process\(es\).*no --batch_size can"):
        accumulation_steps(4, 2, 1, 3)
    with pytest.raises(ValueError, match=r"32 .*choose --batch_size among \[1, 2, 4, 8\]"):
        accumulation_steps(256, 32, 1, 32)  # 8 images per process at most
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        accumulation_steps(8, 0)


def test_world_size_is_torchruns_before_the_process_group_exists(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert world_size() == 1
    monkeypatch.setenv("WORLD_SIZE", "16")
    assert world_size() == 16


def paper_settings(bundle: str) -> ConfigParser:
    """``bundle``'s ``train.json`` with ``cpu_demo_scale`` off, as on a GPU."""
    configs = REPO_ROOT / "bundles" / bundle / "configs"
    parser = ConfigParser()
    parser.read_config(str(configs / "train.json"))
    parser["cpu_demo_scale"] = False
    return parser


@pytest.mark.parametrize("bundle", PRETRAINING_BUNDLES)
def test_every_pretraining_bundle_derives_its_accumulation_from_its_global_batch(bundle, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    parser = paper_settings(bundle)
    config = parser.get()
    assert config["hyper_parameters"]["global_batch_size"] == "@global_batch_size"
    assert config["train"]["trainer"]["accumulation_steps"] == "@accumulation_steps"
    global_batch = parser.get_parsed_content("global_batch_size")
    samples = parser.get_parsed_content("num_samples") if "num_samples" in config else 1
    per_iteration = parser.get_parsed_content("batch_size") * samples
    assert per_iteration * parser.get_parsed_content("accumulation_steps") == global_batch
    if bundle in PAPER_GLOBAL_BATCH:
        assert global_batch == PAPER_GLOBAL_BATCH[bundle]


def test_a_bundle_on_a_world_size_that_cannot_keep_its_global_batch_stops_with_the_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")  # as torchrun --nproc_per_node=3 sets it
    parser = paper_settings("spark2d_pretrain")  # 32 images per step
    with pytest.raises(RuntimeError) as raised:
        parser.get_parsed_content("accumulation_steps")
    assert "global_batch_size 32 cannot be kept on 3 process(es)" in str(raised.value.__cause__)
