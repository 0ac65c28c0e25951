"""Band-limiting a predicted field to the frequencies a coarser grid can hold.

A network trained at 80x96 has only ever been asked for fields that an 80x96 grid represents.
Run at 160x192, its pointwise paths copy the sharp edges of the finer input into the field, and
those frequencies, which training never constrained, are where the extra folding comes from
(issue 11). :func:`band_limit` removes exactly them: along every axis longer than the band it
keeps the lowest ``band`` cosine frequencies (those an axis of ``band`` samples holds) and drops
the rest; along other axes it does nothing, so at the training resolution it is the identity.

Why a truncation of cosine (DCT-II) coefficients rather than of Fourier ones, or a Gaussian:

- a projection: a field made of the fine grid's lowest ``band`` cosines passes unchanged, the
  rest is removed. Those cosines are sampled at the fine grid's pixel centres, so they are the
  coarse grid's band only approximately in this project's ``align_corners=True`` geometry
  (a coarse-grid cosine of frequency k resampled to twice the size changes by about 5e-6 at
  k = 1, 1e-2 at k = 40 of 80); for the smooth fields registration produces the difference is
  negligible. A Gaussian would damp the in-band frequencies the model was trained to produce
  (costing Dice), and still leak some out-of-band ones.
- no wrap-around: the FFT of a field whose values differ at opposite borders sees a jump there,
  and truncating it rings along every border (Gibbs). The cosine transform is the FFT of the
  field mirrored at its borders, which has no jump, so truncation leaves no border ripple.
- separable and cheap: one axis at a time, an FFT of twice the axis length.
"""

import torch

from utils.fields import check_spatial
from utils.precision import in_float32


def band_limit_axis(x, axis, band):
    """Keep the lowest ``band`` cosine frequencies of ``x`` along dimension ``axis``.

    Parameters
    ----------
    x : torch.Tensor
        Real tensor.
    axis : int
        Dimension to filter (any index of ``x``).
    band : int
        Number of cosine frequencies to keep (the length of the coarser axis).

    Returns
    -------
    torch.Tensor
        Same shape as ``x``; ``x`` itself when the axis has at most ``band`` samples.
    """
    n = x.shape[axis]
    if band >= n:
        return x
    if band < 1:
        raise ValueError(f"band must be at least 1, got {band}")
    mirrored = torch.cat([x, x.flip(axis)], dim=axis)  # even extension: DFT = DCT-II
    spectrum = torch.fft.rfft(mirrored, dim=axis)
    # Frequencies 0..band-1 of the 2n-periodic extension are the kept cosines.
    spectrum = spectrum.narrow(axis, 0, band)
    return torch.fft.irfft(spectrum, n=2 * n, dim=axis).narrow(axis, 0, n)


@in_float32
def band_limit(field, band_shape):
    """Low-pass a (B, C, *spatial) field to the cosine band of a ``band_shape`` grid.

    Parameters
    ----------
    field : torch.Tensor
        (B, C, *spatial) real field, e.g. a normalised displacement.
    band_shape : sequence of int
        The coarser grid's shape (e.g. the training shape); one entry per spatial axis. Axes no
        longer than their entry are left alone.

    Returns
    -------
    torch.Tensor
        The filtered field, same shape; ``field`` itself when no axis is longer than its band.
    """
    check_spatial(field, "field to band-limit")
    spatial = field.shape[2:]
    if len(band_shape) != len(spatial):
        raise ValueError(f"band_shape {tuple(band_shape)} must have one entry per spatial axis of {tuple(spatial)}")
    for axis, (n, band) in enumerate(zip(spatial, band_shape)):
        if 0 < int(band) < n:
            field = band_limit_axis(field, 2 + axis, int(band))
    return field
