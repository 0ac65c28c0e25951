"""The size check's message: pad / crop sizes always, ``--size`` suggestions only when near."""

import pytest

from models.sizes import InputSizeError, check_multiple, nearest_allowed_shapes


def _message(shape, multiple=16):
    with pytest.raises(InputSizeError) as err:
        check_multiple("voxelmorph", shape, multiple, "4 poolings by 2")
    return str(err.value)


def test_odd_aspect_gets_pad_and_crop_not_a_far_resize():
    message = _message((81, 95))
    assert "voxelmorph cannot run at 81x95" in message and "multiple of 16" in message
    assert "pad to 96x96 or crop to 80x80" in message
    assert "368x432" not in message and "--size" not in message  # the aspect-keeping sizes are far


def test_resolution_aspect_gets_near_size_suggestions():
    message = _message((100, 120))
    assert "pad to 112x128 or crop to 96x112" in message
    assert "80x96 (--size 80)" in message and "160x192 (--size 160)" in message
    assert "\n" not in message


def test_allowed_shape_passes_and_nearest_keeps_aspect():
    check_multiple("voxelmorph", (80, 96, 112), 16, "x")
    assert nearest_allowed_shapes((100, 120), 16) == [(80, 96), (160, 192), (240, 288)]
