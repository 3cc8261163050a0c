"""``dataset_cache``, the setting that chooses the MONAI data set of every pre-training bundle
(:func:`common.data.training_dataset`): the data set of each mode, and, on ``hyspark_pretrain``'s real
``train#dataloader`` in fresh processes (:mod:`tools.bench_data`), that pointing it at 10 times more volumes leaves
its peak memory and its time to the first batch where they were, while a RAM cache of them would not."""

import logging

import pytest
from monai.data import CacheDataset, Dataset, PersistentDataset

from common.data import training_dataset
from common.data.cache import MAX_RAM_ENTRIES, cache_mode
from common.transforms import pretraining_train_transforms
from tools.bench_data import loader_run, phantom_collection
from tools.measure import in_fresh_process

# A phantom of 96^3 voxels at 1.5 mm (the bundle's spacing, so nothing is resampled) holds up to 3.4 MB of float32
# once loaded and cropped to the body; a RAM cache of 72 more of them adds about 170 MB. The margin is what a data
# set of any size may add to the bundle's peak memory.
MEMORY_MARGIN_MB = 50
FIRST_BATCH_MARGIN_S = 10
SETTINGS = {"pixdim": [1.5, 1.5, 1.5], "roi_size": [32, 32, 32], "num_workers": 0}


@pytest.mark.parametrize(("cache", "entries", "expected"), [
    ("auto", MAX_RAM_ENTRIES, "ram"), ("auto", MAX_RAM_ENTRIES + 1, "none"), ("ram", 10**5, "ram"),
    ("disk", 1, "disk"), ("none", 1, "none"),
])
def test_cache_mode(cache, entries, expected):
    assert cache_mode(cache, entries) == expected


def test_an_unknown_mode_and_disk_without_a_folder_are_refused():
    with pytest.raises(ValueError, match="unknown dataset_cache 'memory'; choose one of auto, ram, disk, none"):
        training_dataset([], None, cache="memory")
    with pytest.raises(ValueError, match="dataset_cache 'disk' needs a cache_dir"):
        training_dataset([], None, cache="disk")


def test_each_mode_builds_its_monai_data_set(tmp_path, caplog):
    volumes = phantom_collection(tmp_path / "ct", 2, distinct=1, shape=(32, 32, 32))
    data = [{"image": str(path)} for path in sorted(volumes.iterdir())]
    transform = pretraining_train_transforms((16, 16, 16), (1.5, 1.5, 1.5), num_samples=1)
    assert type(training_dataset(data, transform, "ram")) is CacheDataset
    with caplog.at_level(logging.WARNING, logger="common.data.cache"):
        assert type(training_dataset(data, transform, "auto", max_ram_entries=1)) is Dataset
    assert "prepare volumes once with python -m tools.prepare" in caplog.text
    on_disk = training_dataset(data, transform, "disk", cache_dir=tmp_path / "cache")
    assert type(on_disk) is PersistentDataset
    assert on_disk[0][0]["image"].shape == (1, 16, 16, 16) and len(list((tmp_path / "cache").glob("*.pt"))) == 1


@pytest.mark.slow
def test_ten_times_more_volumes_leave_memory_and_first_batch_where_they_were(tmp_path):
    few = phantom_collection(tmp_path / "few", 8)
    many = phantom_collection(tmp_path / "many", 80)
    settings = {**SETTINGS, "output_dir": str(tmp_path / "eval")}
    runs = {
        name: in_fresh_process(loader_run, "hyspark_pretrain", str(folder), 3, {**settings, "dataset_cache": cache})
        for name, folder, cache in (("few", few, "auto"), ("many", many, "auto"), ("many_in_ram", many, "ram"))
    }
    assert [runs[name]["dataset"] for name in runs] == ["CacheDataset", "Dataset", "CacheDataset"]
    assert runs["many"]["peak_mb"] < runs["few"]["peak_mb"] + MEMORY_MARGIN_MB, runs
    assert runs["many"]["first_batch_s"] < runs["few"]["first_batch_s"] + FIRST_BATCH_MARGIN_S, runs
    # the measurement sees a cache that grows with the data: 72 more volumes in RAM
    assert runs["many_in_ram"]["peak_mb"] > runs["few"]["peak_mb"] + 2 * MEMORY_MARGIN_MB, runs
