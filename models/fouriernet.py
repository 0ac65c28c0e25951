"""Fourier-Net (Jia et al., AAAI 2023) and Fourier-Net-Diff, one implementation for 2D and 3D.

Rebuilt from the paper and the structure of the authors' public code. A convolutional encoder
(3x3 convolutions with PReLU; four stride-2 stages, C -> 2C -> 4C -> 8C -> 16C channels) and a
two-stage decoder (2x2 transposed convolutions, skip concatenations at 1/8 and 1/4 resolution)
end, at a quarter of the input resolution, in a 3x3 convolution to d channels: a small patch of
displacement values on the quarter-resolution grid. The patch is Fourier-transformed, its
spectrum is zero-padded (centred on the zero frequency) to the input's size and transformed
back: a band-limited field holding only the lowest ``N/4`` frequencies per axis, at the input's
resolution. So the band is a quarter of each side of the input (40x48 coefficients for
160x192, 20x24 for 80x96, 40x48x56 for 160x192x224) and the output always has the input's size.

Decoding uses "forward" FFT normalisation both ways, which makes it exact trigonometric
interpolation, and the patch is scaled by the public code's constant gain first
(:data:`RELEASED_GAIN`): the public 2D code multiplies the network output by 64 and decodes
with unnormalised forward and 1/N inverse transforms, a gain of 64 / 16 = 4 for a quarter-size
patch; the FNOReg authors' 3D code decodes the same way without the 64, a gain of 1/64. The
gain is not a mere rescaling of the last layer: Adam's steps do not shrink with the gradient,
so it sets how far each step moves the field (4 times further in 2D than gain 1 would, 64 times
less far in 3D). :meth:`FourierNet.band` returns the scaled patch: the displacement sampled every
fourth pixel. The field is in normalised coordinates, as in the released code.

With ``diffeomorphic=True`` (Fourier-Net-Diff) the decoded field is a stationary velocity,
integrated by the shared scaling-and-squaring layer (:mod:`models.integrate`, 7 steps and
border padding as published). Layers of the released code that its forward pass never uses are not built, so
the parameter counts are those "used in the forward pass" (1.43 M / 5.71 M in 2D for 16 / 32
starting channels).

Every side of the input must be a multiple of 16 (four stride-2 stages and two skip
concatenations).
"""

import torch
from torch import nn

from utils.errors import ConfigError
from utils.precision import in_float32

from .heads import FlowOutput, init_head, positive_int
from .nd import check_dim, conv, conv_transpose
from .sizes import InputShapeMixin


# The public code's decoding gain per dimension (module docstring).
RELEASED_GAIN = {2: 4.0, 3: 1.0 / 64}


class _ConvPReLU(nn.Sequential):
    def __init__(self, dim, c_in, c_out, stride=1):
        super().__init__(conv(dim, c_in, c_out, 3, stride=stride), nn.PReLU())


class _UpPReLU(nn.Sequential):
    def __init__(self, dim, channels):
        super().__init__(conv_transpose(dim, channels, channels), nn.PReLU())


@in_float32
def band_limited_upsample(patch, shape):
    """Zero-pad the spectrum of ``patch`` (B, C, *m) to spatial ``shape`` and return the real field.

    Exact trigonometric interpolation: the result equals ``patch`` on every ``shape/m``-th
    sample when the ratio is an integer. Frequencies are centred before padding, so the kept
    band is the lowest ``m`` frequencies per axis whatever the parity of ``m`` and ``shape``.
    """
    axes = tuple(range(2, patch.dim()))
    spectrum = torch.fft.fftshift(torch.fft.fftn(patch, dim=axes, norm="forward"), dim=axes)
    pad = []
    for m, n in zip(reversed(patch.shape[2:]), reversed(tuple(shape))):
        if m > n:
            raise ValueError(f"band {tuple(patch.shape[2:])} is larger than the output shape {tuple(shape)}")
        left = n // 2 - m // 2
        pad += [left, n - m - left]
    spectrum = torch.nn.functional.pad(spectrum, pad)
    return torch.fft.ifftn(torch.fft.ifftshift(spectrum, dim=axes), dim=axes, norm="forward").real


class FourierNet(InputShapeMixin, nn.Module):
    """Fourier-Net registration network (band-limited displacement), 2D and 3D.

    Parameters
    ----------
    dim : int
        2 or 3 spatial dimensions.
    start_channels : int
        C, width of the first stage (16 and 32 in the paper's tables).
    diffeomorphic : bool
        Fourier-Net-Diff: the decoded band-limited field is a stationary velocity integrated by
        scaling and squaring.
    integration_steps : int
        Scaling-and-squaring steps when ``diffeomorphic`` (7 as published).
    head_init : {"zeros", "normal", "default"}
        Last convolution's initialisation; "zeros" (default) starts exactly at the identity.
        The released code used PyTorch's default, which starts from a random warp.
    in_channels : int
        2 for ``[moving, fixed]``.
    """

    label = "fouriernet"

    def __init__(self, dim, start_channels=16, diffeomorphic=False, integration_steps=7, head_init="zeros",
                 in_channels=2):
        super().__init__()
        self.dim = check_dim(dim)
        c = positive_int(start_channels, "start_channels")
        if not isinstance(diffeomorphic, bool):
            raise ConfigError(f"diffeomorphic must be true or false, got {diffeomorphic!r}")
        positive_int(integration_steps, "integration_steps")
        self.enc0 = nn.Sequential(_ConvPReLU(dim, in_channels, c), _ConvPReLU(dim, c, c))
        self.enc1 = nn.Sequential(_ConvPReLU(dim, c, 2 * c, 2), _ConvPReLU(dim, 2 * c, 2 * c))
        self.enc2 = nn.Sequential(_ConvPReLU(dim, 2 * c, 4 * c, 2), _ConvPReLU(dim, 4 * c, 4 * c))
        self.enc3 = nn.Sequential(_ConvPReLU(dim, 4 * c, 8 * c, 2), _ConvPReLU(dim, 8 * c, 8 * c))
        self.enc4 = nn.Sequential(_ConvPReLU(dim, 8 * c, 16 * c, 2), _ConvPReLU(dim, 16 * c, 8 * c))
        self.up1 = _UpPReLU(dim, 8 * c)
        self.dec1 = nn.Sequential(_ConvPReLU(dim, 16 * c, 8 * c), _ConvPReLU(dim, 8 * c, 4 * c))
        self.up2 = _UpPReLU(dim, 4 * c)
        self.dec2 = nn.Sequential(_ConvPReLU(dim, 8 * c, 4 * c), _ConvPReLU(dim, 4 * c, 2 * c))
        self.head = conv(dim, 2 * c, dim, 3, bias=False)
        init_head(self.head, head_init)
        # Border padding, as Fourier-Net-Diff's public code integrates (xi-jia/Fourier-Net,
        # DiffeomorphicTransform: grid_sample(..., padding_mode="border")).
        self.output = FlowOutput("normalised", integration_steps if diffeomorphic else 0, padding="border")

    def input_multiple(self):
        return 16

    def _size_reason(self):
        return "its 4 stride-2 stages"

    def band(self, moving, fixed):
        """The quarter-resolution patch (B, d, *spatial/4) whose spectrum is the kept band.

        The head's output times :data:`RELEASED_GAIN`: the displacement every fourth pixel.
        """
        e0 = self.enc0(torch.cat([moving, fixed], dim=1))
        e1 = self.enc1(e0)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        e4 = self.enc4(e3)
        x = self.dec1(torch.cat([self.up1(e4), e3], dim=1))
        x = self.dec2(torch.cat([self.up2(x), e2], dim=1))
        return self.head(x) * RELEASED_GAIN[self.dim]

    def forward(self, moving, fixed):
        """(batch, dim, *spatial) band-limited normalised displacement warping ``moving`` onto
        ``fixed`` ((batch, 1, *spatial) each, every side a multiple of 16)."""
        self.check_inputs(moving, fixed)
        patch = self.band(moving, fixed)
        return self.output(band_limited_upsample(patch, moving.shape[2:]))


__all__ = ["FourierNet", "band_limited_upsample"]
