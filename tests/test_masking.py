"""common.masking: exact per-sample keep counts, determinism, bottom-up consistency across scales."""

import pytest
import torch
import torch.nn.functional as F

from common.masking import keep_count, random_patch_mask, upsample_mask


def test_every_sample_keeps_exactly_round_l_times_one_minus_ratio():
    mask = random_patch_mask(8, (6, 6, 6), 0.75)
    assert mask.shape == (8, 1, 6, 6, 6) and mask.dtype == torch.bool
    assert mask.flatten(1).sum(1).tolist() == [54] * 8  # round(216 * 0.25), per sample, not per batch
    assert keep_count(216, 0.6) == 86


def test_samples_get_different_masks_and_a_generator_makes_them_reproducible():
    a = random_patch_mask(4, (4, 4), 0.5, generator=torch.Generator().manual_seed(3))
    b = random_patch_mask(4, (4, 4), 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])


def test_upsampled_mask_pools_back_to_the_coarse_mask_at_every_scale():
    coarse = random_patch_mask(2, (3, 3, 3), 0.5)
    for factor in (1, 2, 4, 16):
        fine = upsample_mask(coarse, (3 * factor,) * 3)
        assert fine.flatten(1).sum(1).tolist() == [int(coarse[0].sum()) * factor**3] * 2
        any_visible = F.max_pool3d(fine.float(), factor).bool()
        all_visible = (-F.max_pool3d(-fine.float(), factor)).bool()
        assert torch.equal(any_visible, coarse) and torch.equal(all_visible, coarse)  # each cell is one block


@pytest.mark.parametrize("ratio", [-0.1, 1.0])
def test_mask_ratio_out_of_range_is_an_error(ratio):
    with pytest.raises(ValueError, match="mask_ratio"):
        random_patch_mask(1, (2, 2), ratio)


def test_upsampling_to_a_size_that_is_not_a_multiple_is_an_error():
    with pytest.raises(ValueError, match="not a multiple"):
        upsample_mask(torch.ones(1, 1, 3, 3, 3, dtype=torch.bool), (8, 8, 8))
