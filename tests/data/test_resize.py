"""--size shapes and batched resizing of images and label maps."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from data.resize import gaussian_blur, resize_images, resize_labels, shape_for_size
from utils.errors import ConfigError, ShapeError


@pytest.mark.parametrize("size, full, expected", [
    (80, (160, 192), (80, 96)),
    (80, (160, 192, 224), (80, 96, 112)),
    (160, (160, 192), (160, 192)),
    (40, (160, 192, 224), (40, 48, 56)),
    (96, (192, 160), (115, 96)),
])
def test_shape_for_size(size, full, expected):
    assert shape_for_size(size, full) == expected


@pytest.mark.parametrize("bad", [0, 1, 80.0, True, "80"])
def test_shape_for_size_rejects(bad):
    with pytest.raises(ConfigError, match="--size"):
        shape_for_size(bad, (160, 192))


@pytest.mark.parametrize("full, small", [((160, 192), (80, 96)), ((32, 40, 48), (16, 20, 24))])
def test_resize_images_shapes_and_corners(full, small):
    x = torch.rand(3, 1, *full, generator=torch.Generator().manual_seed(0))
    y = resize_images(x, small)
    assert y.shape == (3, 1, *small) and y.dtype == torch.float32
    # Corners are aligned, so corner samples survive exactly (the warp's convention).
    corner = (slice(None), 0) + (0,) * len(full)
    far = (slice(None), 0) + (-1,) * len(full)
    # (float rounding of the source position leaves up to ~1e-5 of the neighbour's weight)
    assert torch.allclose(y[corner], x[corner], atol=1e-4)
    assert torch.allclose(y[far], x[far], atol=1e-4)
    assert torch.allclose(resize_images(torch.full((1, 1, *full), 0.3), small), torch.tensor(0.3))
    assert resize_images(x, full) is x  # no-op fast path


def test_resize_images_batching_and_antialias():
    x = torch.rand(5, 1, 32, 40)
    assert torch.allclose(resize_images(x, (16, 20), batch_size=2), resize_images(x, (16, 20)))
    # A checkerboard aliases into a strong beat pattern without low-pass; with it, it is ~0.5.
    board = (torch.arange(64)[:, None] + torch.arange(80)[None, :]) % 2
    board = board.float().view(1, 1, 64, 80)
    plain = resize_images(board, (16, 20))
    smooth = resize_images(board, (16, 20), antialias=True)
    assert (smooth[..., 2:-2, 2:-2] - 0.5).abs().max() < 0.05
    assert (plain - 0.5).abs().max() > 0.4


def test_resize_labels_keeps_dtype_and_values():
    for dtype in (torch.int16, torch.int64):
        x = torch.randint(0, 25, (2, 1, 160, 192), dtype=dtype)
        y = resize_labels(x, (80, 96))
        assert y.dtype == dtype and y.shape == (2, 1, 80, 96)
        assert set(torch.unique(y).tolist()) <= set(torch.unique(x).tolist())
        assert y[0, 0, 0, 0] == x[0, 0, 0, 0] and y[0, 0, -1, -1] == x[0, 0, -1, -1]
        assert resize_labels(x, (160, 192)) is x
    # Nearest neighbour on the corner-aligned grid: 5 -> 3 samples take 0, 2, 4.
    line = torch.arange(5).view(1, 1, 1, 5)
    assert resize_labels(line, (1, 3)).flatten().tolist() == [0, 2, 4]
    vol = torch.randint(0, 36, (1, 1, 16, 20, 24), dtype=torch.int16)
    assert resize_labels(vol, (8, 10, 12)).shape == (1, 1, 8, 10, 12)
    # Upsampling by nearest neighbour and back returns the original map.
    assert torch.equal(resize_labels(resize_labels(vol, (31, 39, 47)), (16, 20, 24)), vol)


def test_resize_rejects_wrong_dimensions():
    with pytest.raises(ShapeError, match="images must be"):
        resize_images(torch.rand(1, 160, 192), (80, 96))
    with pytest.raises(ShapeError, match="labels must be"):
        resize_labels(torch.zeros(1, 1, 16, 20, dtype=torch.int64), (8, 10, 12))


def test_gaussian_blur_matches_scipy():
    x = torch.rand(2, 1, 12, 14, 10)
    ours = gaussian_blur(x, (0.6, 1.5, 0.0)).numpy()
    ref = gaussian_filter(x.numpy(), (0, 0, 0.6, 1.5, 0), mode="constant", truncate=3.0)
    np.testing.assert_allclose(ours, ref, atol=1e-6)
