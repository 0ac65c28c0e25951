"""A split's subjects on the compute device at one resolution, and pair batches drawn from it.

The subjects are read once; here they are resized on the device in chunks (images linearly,
labels by nearest neighbour) and kept there when they fit, so a batch is an index operation,
not a file read. When the device is short of memory they stay on the CPU and each batch is
copied over.

Memory: label maps stay in their compact stored type (int16, 2 bytes a voxel) and are cast to
int64 per batch; at the native shape on the CPU the split's own tensors are used without a copy.
A split therefore costs 6 bytes a voxel where it lives (4 for the image, 2 for the labels), not 12.
"""

from dataclasses import dataclass

import torch

from data.resize import resize_images, resize_labels


def _fits_on(device, n_bytes, fraction=0.4):
    if torch.device(device).type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return n_bytes < fraction * free


def _resize_in_chunks(x, shape, fn, device, store, chunk=32, **kw):
    """``fn(x, shape)`` computed on ``device`` in chunks and kept on ``store``.

    ``x`` itself (no copy) when it already has ``shape`` and lives on ``store``.
    """
    if tuple(x.shape[2:]) == tuple(shape) and x.device == torch.device(store):
        return x
    out = []
    for start in range(0, x.shape[0], chunk):
        part = x[start : start + chunk].to(device, non_blocking=True)
        out.append(fn(part, shape, **kw).to(store))
    return torch.cat(out) if out else x


def _prod(shape):
    out = 1
    for s in shape:
        out *= int(s)
    return out


@dataclass
class PairBatch:
    """One batch of registration pairs (labels None where the split has none)."""

    moving: torch.Tensor
    fixed: torch.Tensor
    moving_labels: torch.Tensor = None  # int64, at the split's label shape
    fixed_labels: torch.Tensor = None
    has_labels: torch.Tensor = None  # (B,) both subjects of the pair have label maps

    def select(self, rows):
        """The pairs ``rows`` (a (B,) bool mask or index tensor) of this batch."""
        def take(x):
            return None if x is None else x[rows]
        return PairBatch(self.moving[rows], self.fixed[rows], take(self.moving_labels), take(self.fixed_labels),
                         take(self.has_labels))


class DeviceSplit:
    """A :class:`data.dataset.RegistrationSplit` resized to ``shape`` and placed for ``device``.

    Parameters
    ----------
    split : data.dataset.RegistrationSplit
        Subjects at their native resolution on the CPU.
    shape : tuple of int
        Spatial shape to work at (the native shape: no resizing).
    device : torch.device
        Where batches are needed.
    antialias : bool
        Low-pass images before downsampling (off by default, as published).
    label_shape : tuple of int, optional
        Spatial shape of the label maps in batches (default ``shape``). The evaluation passes the
        native shape to score Dice and HD95 on the native label maps while the model runs at
        ``shape``.

    Attributes
    ----------
    images : torch.Tensor
        (N, 1, *shape) float32 on ``store``.
    labels : torch.Tensor or None
        (N, 1, *label_shape) in the split's stored integer type (int16), on ``store``.
    """

    def __init__(self, split, shape, device, antialias=False, label_shape=None):
        self.split = split
        self.shape = tuple(shape)
        self.label_shape = tuple(label_shape) if label_shape is not None else self.shape
        self.device = torch.device(device)
        n = split.images.shape[0]
        n_bytes = n * _prod(self.shape) * split.images.element_size()
        if split.labels is not None:
            n_bytes += n * _prod(self.label_shape) * split.labels.element_size()
        self.store = self.device if _fits_on(self.device, n_bytes) else torch.device("cpu")
        self.images = _resize_in_chunks(split.images, self.shape, resize_images, self.device, self.store,
                                        antialias=antialias)
        self.labels = None
        if split.labels is not None:
            self.labels = _resize_in_chunks(split.labels, self.label_shape, resize_labels, self.device, self.store)
        self.has_labels = split.has_labels.to(self.store)
        self.pairs = split.pairs
        # The pair table where the subjects are: indices already there gather without a copy
        # from the host (on a GPU a blocking copy, which would wait for the previous step).
        self._stored_pairs = split.pairs.to(self.store)

    def __len__(self):
        return self.pairs.shape[0]

    def batch(self, pair_indices):
        """Gather the pairs ``pair_indices`` (1D tensor of rows of ``pairs``) onto the device.

        Indices on :attr:`store` (see :meth:`index_device`) take no copy from the host.
        """
        if pair_indices.device == self._stored_pairs.device:
            rows = self._stored_pairs[pair_indices]
        else:
            rows = self.pairs[pair_indices.cpu()]
        mov, fix = rows[:, 0].to(self.store), rows[:, 1].to(self.store)

        def take(t, idx):
            return t[idx].to(self.device, non_blocking=True)

        out = PairBatch(take(self.images, mov), take(self.images, fix))
        if self.labels is not None:
            out.moving_labels, out.fixed_labels = take(self.labels, mov).long(), take(self.labels, fix).long()
            out.has_labels = take(self.has_labels, mov) & take(self.has_labels, fix)
        return out

    @property
    def index_device(self):
        """Where pair indices should live for :meth:`batch` (the training loop moves an epoch's order once)."""
        return self._stored_pairs.device

    def batches(self, batch_size):
        """Iterate over all pairs in order, ``batch_size`` at a time: yields (pair indices, PairBatch)."""
        for start in range(0, len(self), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(self)))
            yield idx, self.batch(idx)
