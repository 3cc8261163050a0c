"""HySparK on real CT (../shared/data, skipped when absent): over-fitting one fixed masked batch of the
TotalSegmentator abdomen scan lowers the loss and writes a reconstruction PNG."""

from PIL import Image

from common.previews import HEADER_HEIGHT
from tools.overfit import overfit


def test_hyspark_overfits_a_fixed_batch_of_a_real_abdomen_scan(shared_data, tmp_path):
    scan = shared_data / "totalsegmentator" / "example_ct.nii.gz"
    result = overfit(str(scan), steps=12, roi_size=32, learning_rate=2e-3, png=str(tmp_path / "recon.png"))
    losses = result["losses"]
    assert len(losses) == 12
    assert min(losses[-3:]) < 0.8 * losses[0], losses
    with Image.open(tmp_path / "recon.png") as png:
        assert png.size == (4 * 32 * 3, HEADER_HEIGHT + 3 * 32 * 3)  # 4 images x 3 views of a 32^3 crop, upscaled 3x
