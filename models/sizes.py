"""Input sizes a network can take, checked before it runs.

FNOReg runs at any size. The baselines down-sample by strided convolutions, poolings or patch
merging and concatenate skip connections, so every side must be a multiple of some number
(16 for VoxelMorph and Fourier-Net, 32 for the published TransMorph). Such a model mixes in
:class:`InputShapeMixin`: ``model.check_input_shape(shape)`` raises :class:`InputSizeError`, a
:class:`utils.errors.UserError`, with one line that names the model, the size and the sizes that
work, so scripts can refuse a ``--size`` before any folder is made (exit status 2), and the
forward pass raises the same error instead of a shape traceback from inside the network.
"""

from utils.errors import ShapeError
from utils.fields import check_image_pair


class InputSizeError(ShapeError):
    """The image size is not one the network's down-sampling allows."""


def _fmt(shape):
    return "x".join(str(int(n)) for n in shape)


def _scaled(shape, smallest):
    """``shape`` rescaled so that its smallest side is ``smallest`` (the ``--size`` rule)."""
    low = min(shape)
    return tuple(smallest if n == low else max(1, round(n * smallest / low)) for n in shape)


def nearest_allowed_shapes(shape, multiple, count=2):
    """Shapes with the aspect ratio of ``shape`` whose sides are all multiples of ``multiple``.

    Returns up to ``count`` shapes below and ``count`` above ``min(shape)``, nearest first on
    each side, searched up to four times the largest side.
    """
    low = min(shape)
    candidates = [_scaled(shape, s) for s in range(multiple, 4 * max(shape) + 1, multiple)]
    ok = [c for c in candidates if all(n % multiple == 0 for n in c)]
    below = [c for c in ok if min(c) < low][-count:]
    above = [c for c in ok if min(c) > low][:count]
    return below + above


def check_multiple(model_name, shape, multiple, reason):
    """Raise :class:`InputSizeError` unless every side of ``shape`` is a multiple of ``multiple``.

    Parameters
    ----------
    model_name : str
        Name used in the message (the config's ``model_name``).
    shape : sequence of int
        Spatial shape of the input.
    multiple : int
        Every side must be divisible by it.
    reason : str
        Why, in a few words (e.g. "4 poolings by 2").
    """
    shape = tuple(int(n) for n in shape)
    if all(n % multiple == 0 for n in shape):
        return
    # --size keeps the aspect ratio, so only a shape with a friendly one has a near --size; an
    # odd shape (81x95) would be sent to 368x432. Offer those near ones, and always pad / crop.
    low = min(shape)
    hint = [s for s in nearest_allowed_shapes(shape, multiple) if low / 3 <= min(s) <= 3 * low]
    down = tuple(max(multiple, n // multiple * multiple) for n in shape)
    up = tuple(-(-n // multiple) * multiple for n in shape)
    tail = f"; pad to {_fmt(up)}" + ("" if down == up else f" or crop to {_fmt(down)}")
    if hint:
        tail += ", or resize: " + ", ".join(f"{_fmt(s)} (--size {min(s)})" for s in hint)
    raise InputSizeError(f"{model_name} cannot run at {_fmt(shape)}: every side must be a multiple of {multiple} "
                         f"({reason}){tail}")


class InputShapeMixin:
    """For networks whose input sides must be multiples of ``self.input_multiple()``.

    Subclasses define ``input_multiple()`` and ``_size_reason()`` and call
    ``self.check_inputs(moving, fixed)`` at the start of ``forward``.
    """

    label = "model"

    def input_multiple(self):
        raise NotImplementedError

    def _size_reason(self):
        return "down-sampling"

    def check_inputs(self, moving, fixed):
        """Check a ``[moving, fixed]`` pair for ``forward``: (batch, 1, *spatial) images of one
        shape, of this model's dimension, every side a multiple of :meth:`input_multiple`."""
        check_image_pair(moving, fixed, self.dim)
        self.check_input_shape(moving.shape[2:])

    def check_input_shape(self, shape):
        """Raise :class:`InputSizeError` (one line, exit status 2 in the scripts) if the network
        cannot run at spatial ``shape``; return None otherwise. Cheap: nothing is run."""
        name = getattr(self, "model_name", None) or self.label
        check_multiple(name, shape, self.input_multiple(), self._size_reason())


__all__ = ["InputShapeMixin", "InputSizeError", "check_multiple", "nearest_allowed_shapes"]
