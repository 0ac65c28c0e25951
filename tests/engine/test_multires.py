"""Multi-resolution training: sizes deterministic from (seed, epoch, step), batches resized, config checks."""

import pytest
import torch

from engine.batches import PairBatch
from engine.multires import multires_batch, step_size, validate_multires
from utils.errors import ConfigError


def test_sizes_are_deterministic_from_seed_epoch_and_step():
    a = [step_size(0, 3, s, 64, 160) for s in range(50)]
    assert a == [step_size(0, 3, s, 64, 160) for s in range(50)]  # a resume replays them
    assert a != [step_size(0, 4, s, 64, 160) for s in range(50)]
    assert a != [step_size(1, 3, s, 64, 160) for s in range(50)]
    assert min(a) >= 64 and max(a) <= 160 and len(set(a)) > 10


def test_batches_are_resized_keeping_the_aspect_ratio():
    batch = PairBatch(torch.rand(2, 1, 40, 48), torch.rand(2, 1, 40, 48),
                      torch.randint(0, 4, (2, 1, 40, 48)), torch.randint(0, 4, (2, 1, 40, 48)), torch.ones(2, dtype=torch.bool))
    cfg = {"min_size": 10, "max_size": 40}
    shapes = set()
    for step in range(20):
        out = multires_batch(batch, cfg, 0, 1, step)
        size = step_size(0, 1, step, 10, 40)
        assert out.moving.shape[2] == size and out.fixed.shape == out.moving.shape
        assert out.moving_labels.shape[2:] == out.moving.shape[2:] and out.moving_labels.dtype == batch.moving_labels.dtype
        assert abs(out.moving.shape[3] - round(48 * size / 40)) <= 1
        shapes.add(tuple(out.moving.shape[2:]))
    assert len(shapes) > 3
    assert multires_batch(batch, None, 0, 1, 0) is batch


def test_antialias_applies_to_the_drawn_size():
    from data.resize import resize_images, shape_for_size

    images = torch.rand(2, 1, 40, 48)
    batch = PairBatch(images, images.flip(0))
    cfg = {"min_size": 10, "max_size": 40}
    step = next(s for s in range(50) if step_size(0, 1, s, 10, 40) <= 20)  # a strong downsampling
    shape = shape_for_size(step_size(0, 1, step, 10, 40), (40, 48))
    for antialias in (False, True):
        out = multires_batch(batch, cfg, 0, 1, step, antialias)
        torch.testing.assert_close(out.moving, resize_images(images, shape, antialias), rtol=0, atol=0)
    assert not torch.equal(multires_batch(batch, cfg, 0, 1, step, True).moving,
                           multires_batch(batch, cfg, 0, 1, step, False).moving)


@pytest.mark.parametrize("value, message", [
    ({"min_size": 80}, "max_size"),
    ({"min_size": 100, "max_size": 80}, "exceeds"),
    ({"min_size": 64, "max_size": 160, "step": 2}, "unknown"),
    ([64, 160], "object"),
])
def test_bad_multires_config_names_the_key(value, message):
    with pytest.raises(ConfigError, match=message):
        validate_multires(value)
