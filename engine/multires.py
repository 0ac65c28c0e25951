"""Multi-resolution training: each batch at a size drawn from a configured range.

A model trained at one grid only ever sees that grid's pixel pitch and learns to rely on it.
With ``train_config.multires = {"min_size": 64, "max_size": 160}`` every training batch is resized
(images linearly, labels by nearest neighbour, as ``--size`` does) to a shape whose smallest side
is drawn uniformly from ``min_size..max_size``, the other sides keeping the data's aspect ratio.
The split is held at the shape of ``max_size``; validation runs at that shape too.

The size of step ``s`` of epoch ``e`` depends on ``(seed, e, s)`` only, so a resumed run draws
exactly the sizes of an uninterrupted one and stays bit-exact.
"""

from dataclasses import replace

import torch

from data.resize import resize_images, resize_labels, shape_for_size
from utils.errors import ConfigError

MULTIRES_KEYS = ("min_size", "max_size")


def validate_multires(value):
    """Check ``train_config.multires`` (null or ``{"min_size": a, "max_size": b}``, 2 <= a <= b)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"train_config.multires must be null or an object with {MULTIRES_KEYS}, got {value!r}")
    unknown = set(value) - set(MULTIRES_KEYS)
    if unknown:
        raise ConfigError(f"unknown train_config.multires key {sorted(unknown)[0]!r}; valid keys: {', '.join(MULTIRES_KEYS)}")
    for key in MULTIRES_KEYS:
        v = value.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 2:
            raise ConfigError(f"train_config.multires.{key} must be an integer >= 2, got {v!r}")
    if value["min_size"] > value["max_size"]:
        raise ConfigError(f"train_config.multires.min_size ({value['min_size']}) exceeds max_size ({value['max_size']})")
    return dict(value)


def step_size(seed, epoch, step, min_size, max_size):
    """Smallest side of step ``step`` of epoch ``epoch``: uniform in ``min_size..max_size``.

    Drawn from a generator seeded by ``(seed, epoch, step)`` alone, so any step can be replayed.
    """
    gen = torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_033 + step) % (2**63))
    return int(torch.randint(min_size, max_size + 1, (1,), generator=gen))


def resize_batch(batch, shape, antialias=False):
    """A :class:`engine.batches.PairBatch` resized to ``shape`` (itself when it has that shape).

    ``antialias``: low-pass the images before downsampling (``data_config.antialias``, as the
    split itself was resized); label maps are always resized by nearest neighbour.
    """
    shape = tuple(int(s) for s in shape)
    if tuple(batch.moving.shape[2:]) == shape:
        return batch
    out = replace(batch, moving=resize_images(batch.moving, shape, antialias),
                  fixed=resize_images(batch.fixed, shape, antialias))
    if batch.moving_labels is not None:
        out.moving_labels = resize_labels(batch.moving_labels, shape)
        out.fixed_labels = resize_labels(batch.fixed_labels, shape)
    return out


def multires_batch(batch, multires, seed, epoch, step, antialias=False):
    """Resize a training batch to this step's drawn size; ``batch`` itself when multires is off.

    ``antialias`` as in :func:`resize_batch`: the configured ``data_config.antialias``.
    """
    if not multires:
        return batch
    size = step_size(seed, epoch, step, multires["min_size"], multires["max_size"])
    full = batch.moving.shape[2:]
    # The split is held at max_size; shapes keep its aspect ratio.
    return resize_batch(batch, shape_for_size(size, tuple(full)) if size < min(full) else full, antialias)
