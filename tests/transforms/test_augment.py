from __future__ import annotations

import torch

from deeppneumonia.config import AugmentConfig
from deeppneumonia.transforms.augment import augment


def test_mask_moves_with_the_image() -> None:
    """With intensity changes off, an image equal to its mask stays equal to it after augmentation."""
    cfg = AugmentConfig(crop_scale=(0.5, 0.9), rotate_deg=20, hflip=True, brightness=0, contrast=0, gamma=0)
    mask = torch.zeros(6, 1, 32, 32)
    mask[:, :, 8:20, 5:15] = 1
    img, m = augment(mask.clone(), mask.clone(), cfg, torch.Generator().manual_seed(0))
    assert m is not None
    assert torch.allclose(img, m, atol=1e-6)
    assert not torch.allclose(m, mask)  # and something did move


def test_seeded_and_in_range() -> None:
    cfg = AugmentConfig(blur_prob=0.5, noise_std=0.05)
    x = torch.rand(4, 1, 24, 24)
    a, _ = augment(x, None, cfg, torch.Generator().manual_seed(1))
    b, _ = augment(x, None, cfg, torch.Generator().manual_seed(1))
    c, _ = augment(x, None, cfg, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1 and a.shape == x.shape


def test_blur_sigma_is_relative_to_the_image_side() -> None:
    from deeppneumonia.transforms.augment import blur_sigma_px

    cfg = AugmentConfig(blur_sigma_rel=(0.005, 0.01))
    assert blur_sigma_px(cfg, 64) == (0.32, 0.64) and blur_sigma_px(cfg, 224) == (1.12, 2.24)
    assert blur_sigma_px(AugmentConfig(blur_sigma=(0.1, 1.5)), 64) == (0.1, 1.5)  # pixels, as older presets say


def test_one_preset_blurs_alike_at_every_size() -> None:
    """A blurred step edge spreads over the same fraction of the image at 64 and 256 px."""
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), rotate_deg=0, brightness=0, contrast=0, gamma=0, blur_prob=1.0,
                        blur_sigma_rel=(0.03, 0.03))
    widths = []
    for side in (64, 256):
        x = torch.zeros(1, 1, side, side)
        x[..., side // 2:] = 1.0
        y, _ = augment(x, None, cfg, torch.Generator().manual_seed(0))
        profile = y[0, 0, side // 4, :]
        widths.append(float(((profile > 0.1) & (profile < 0.9)).sum()) / side)
    assert abs(widths[0] - widths[1]) < 0.02 and widths[0] > 0.03


def test_pretrain_recipe_is_light() -> None:
    from deeppneumonia.config import PretrainConfig

    a = PretrainConfig().augment
    assert a.crop_scale[0] >= 0.5 and max(a.brightness, a.contrast, a.gamma) <= 0.2 and a.blur_sigma is None
    assert PretrainConfig().select == "last"


def test_random_shift_crop_is_a_whole_pixel_translation_with_zero_fill() -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 1, 32, 32)
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), rotate_deg=0.0, brightness=0.0, contrast=0.0, gamma=0.0, shift=0.125)
    out, _ = augment(x, None, cfg, torch.Generator().manual_seed(1))
    moved = 0
    for i in range(4):
        found = []
        for dy in range(-4, 5):
            for dx in range(-4, 5):
                ref = torch.zeros(32, 32)
                src = x[i, 0, max(0, -dy):32 - max(0, dy), max(0, -dx):32 - max(0, dx)]
                ref[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
                if torch.allclose(out[i, 0], ref, atol=1e-5):
                    found.append((dy, dx))
        assert len(found) == 1, found
        moved += found[0] != (0, 0)
    assert moved >= 2
