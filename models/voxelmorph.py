"""VoxelMorph (Balakrishnan et al., IEEE TMI 2019) and the FNOReg paper's VoxelMorph-Large, 2D and 3D.

Two U-Nets that predict a dense displacement from ``[moving, fixed]``, rebuilt from the papers
and the structure of the public code (voxelmorph's PyTorch ``Unet``/``VxmDense``, TransMorph's
VoxelMorph baselines, the FNOReg authors' ``DeepUNet``):

``architecture="strided"`` (VoxelMorph-1, VoxelMorph-2, VoxelMorph-Huge: the presets)
    The U-Net of voxelmorph's PyTorch code as TransMorph's baselines ran it, which the FNOReg
    authors trained their VoxelMorph rows with. Encoder: one stride-2 3x3 convolution +
    LeakyReLU(0.2) per level (``enc_features``). Decoder: per level a 3x3 convolution, nearest 2x
    up-sampling and concatenation with the encoder output of that resolution, the last one with
    the 2-channel input itself; the widths after the first ``len(enc_features)`` entries of
    ``dec_features`` are extra full-resolution convolutions. Head: 3x3 convolution to d
    channels, weights N(0, 1e-5^2), zero bias. Its 3D counts are the TransMorph paper's:
    274,387 (VoxelMorph-1, whose TransMorph features are (8, 32, 32, 32) / (32, 32, 32, 32, 32, 8,
    8) rather than the VoxelMorph paper's 16 first encoder channels), 301,411 and 63,252,939.
``architecture="unet"``
    voxelmorph's current PyTorch ``Unet``: a stride-1 3x3 convolution + LeakyReLU(0.2) per
    level, then 2x max pooling; decoder as above, but each level concatenates the convolution
    output before its pooling (the full-resolution one included) instead of the input. Head as
    above. (This project's VoxelMorph presets before 2026-11-30.)
``architecture="residual"`` (VoxelMorph-Large)
    3x3 lifting to ``start_channels`` C; ``levels`` encoder blocks, each ``res_blocks`` bottleneck
    residual blocks (1x1 halving, two 3x3 conv-BN-ReLU, 1x1 back, plus the input) followed by a
    stride-2 3x3 conv-BN-ReLU doubling the width; ``latent_blocks`` residual blocks at the
    bottom; decoder blocks of a 2x2 transposed conv-BN-ReLU halving the width, ``res_blocks``
    residual blocks, concatenation with the encoder feature and a 1x1 conv-BN-ReLU; head 3x3
    conv-BN-ReLU and a 1x1 convolution to d channels.

Every side of the input must be a multiple of ``2**levels`` (16 for every preset): the model
says so in one line (:meth:`check_input_shape`) instead of failing inside a concatenation.
Output: normalised displacement; ``flow_units`` says what the last layer predicts (``"pixels"``
as in voxelmorph's code for ``strided`` and ``unet``, ``"normalised"`` as in the FNOReg authors'
VoxelMorph-Large), see :mod:`models.heads`.
"""

import torch
from torch import nn

from utils.errors import ConfigError

from .heads import FlowOutput, check_choice, init_head, int_list, positive_int
from .nd import batch_norm, check_dim, conv, conv_transpose, max_pool
from .sizes import InputShapeMixin

ARCHITECTURES = ("strided", "unet", "residual")
_UNET_KEYS = ("enc_features", "dec_features")
_RESIDUAL_KEYS = ("start_channels", "levels", "res_blocks", "latent_blocks")
_RESIDUAL_DEFAULTS = dict(start_channels=32, levels=4, res_blocks=2, latent_blocks=1)


class _ConvAct(nn.Sequential):
    """3x3 convolution + LeakyReLU(0.2): voxelmorph's ConvBlock."""

    def __init__(self, dim, c_in, c_out, stride=1):
        super().__init__(conv(dim, c_in, c_out, 3, stride=stride), nn.LeakyReLU(0.2))


class _ConvBNReLU(nn.Sequential):
    def __init__(self, dim, c_in, c_out, kernel_size=3, stride=1):
        super().__init__(conv(dim, c_in, c_out, kernel_size, stride=stride), batch_norm(dim, c_out), nn.ReLU())


class _ResidualBlock(nn.Module):
    """Bottleneck residual block: 1x1 to c/2, two 3x3 conv-BN-ReLU, 1x1 back to c, plus the input."""

    def __init__(self, dim, channels):
        super().__init__()
        half = max(channels // 2, 1)
        self.body = nn.Sequential(
            conv(dim, channels, half, 1), _ConvBNReLU(dim, half, half), _ConvBNReLU(dim, half, half),
            conv(dim, half, channels, 1),
        )

    def forward(self, x):
        return x + self.body(x)


class _UNet(nn.Module):
    """voxelmorph's U-Net, either version: returns the last full-resolution feature map.

    ``strided``: stride-2 encoder convolutions, each decoder level concatenated with the encoder
    output one level up (the input itself last). Otherwise stride-1 convolutions each followed by
    max pooling, each decoder level concatenated with the pre-pooling output of its level.
    """

    def __init__(self, dim, in_channels, enc_features, dec_features, strided):
        super().__init__()
        levels = len(enc_features)
        if len(dec_features) < levels:
            raise ConfigError(f"dec_features needs at least one entry per encoder level ({levels}), "
                              f"got {len(dec_features)}")
        self.strided = strided
        self.encoder = nn.ModuleList()
        prev = in_channels
        for nf in enc_features:
            self.encoder.append(_ConvAct(dim, prev, nf, stride=2 if strided else 1))
            prev = nf
        skips = ([in_channels, *enc_features[:-1]] if strided else list(enc_features))[::-1]  # deepest first
        self.decoder = nn.ModuleList()
        for nf, skip in zip(dec_features[:levels], skips):
            self.decoder.append(_ConvAct(dim, prev, nf))
            prev = nf + skip
        self.remaining = nn.Sequential()
        for nf in dec_features[levels:]:
            self.remaining.append(_ConvAct(dim, prev, nf))
            prev = nf
        self.pool = None if strided else max_pool(dim, 2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.out_channels = prev

    def forward(self, x):
        skips = []
        for layer in self.encoder:
            if self.strided:
                skips.append(x)
                x = layer(x)
            else:
                x = layer(x)
                skips.append(x)
                x = self.pool(x)
        for layer in self.decoder:
            x = torch.cat([self.up(layer(x)), skips.pop()], dim=1)
        return self.remaining(x)


class _ResidualUNet(nn.Module):
    """The FNOReg authors' deeper U-Net (VoxelMorph-Large): returns the last feature map."""

    def __init__(self, dim, in_channels, start_channels, levels, res_blocks, latent_blocks):
        super().__init__()
        c = start_channels
        self.lifting = conv(dim, in_channels, c, 3)
        self.encoder = nn.ModuleList()
        for i in range(levels):
            w = c * 2 ** i
            self.encoder.append(nn.Sequential(*[_ResidualBlock(dim, w) for _ in range(res_blocks)],
                                              _ConvBNReLU(dim, w, 2 * w, 3, stride=2)))
        self.latent = nn.Sequential(*[_ResidualBlock(dim, c * 2 ** levels) for _ in range(latent_blocks)])
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for i in range(levels, 0, -1):
            w = c * 2 ** i
            self.up.append(nn.Sequential(conv_transpose(dim, w, w // 2), batch_norm(dim, w // 2), nn.ReLU(),
                                         *[_ResidualBlock(dim, w // 2) for _ in range(res_blocks)]))
            self.merge.append(_ConvBNReLU(dim, w, w // 2, 1))
        self.end = _ConvBNReLU(dim, c, c, 3)
        self.out_channels = c

    def forward(self, x):
        x = self.lifting(x)
        skips = [x]
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = self.latent(skips.pop())
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return self.end(x)


class VoxelMorph(InputShapeMixin, nn.Module):
    """VoxelMorph registration U-Net, one implementation for 2D and 3D.

    Parameters
    ----------
    dim : int
        2 or 3 spatial dimensions.
    architecture : {"strided", "unet", "residual"}
        voxelmorph's U-Net as the published comparisons ran it (stride-2 encoder; the presets),
        voxelmorph's current U-Net (max pooling; the default, so that configs and checkpoints
        written before the presets changed still build the network they trained), or the
        residual U-Net of the FNOReg paper's VoxelMorph-Large.
    enc_features, dec_features : list of int
        ``strided`` and ``unet``: encoder widths (one per level) and decoder widths (one per
        level, then any extra full-resolution convolutions), e.g. [16, 32, 32, 32] and
        [32, 32, 32, 32, 32, 16, 16] (VoxelMorph-2).
    start_channels, levels, res_blocks, latent_blocks : int
        ``residual`` only (defaults 32, 4, 2, 1: VoxelMorph-Large).
    flow_units : {"pixels", "normalised"}
        What the last layer predicts; the returned field is always normalised (see
        :mod:`models.heads`). Default: "pixels" for ``strided`` and ``unet``, "normalised" for
        ``residual``, as in the code each was published with.
    head_init : {"normal", "zeros", "default"}
        Last layer's initialisation. Default: "normal" (N(0, 1e-5^2), voxelmorph's) for the U-Nets,
        whose pixel-unit output then starts within about 1e-4 pixels of the identity; "zeros" for
        ``residual``, whose normalised output would otherwise start about 0.02 pixels off at
        160x192 (its released code used PyTorch's default, a random warp).
    integration_steps : int
        0 (default): the field is a displacement. k > 0: a stationary velocity integrated by
        scaling and squaring in k steps (VoxelMorph-diff uses 7).
    in_channels : int
        2 for ``[moving, fixed]``.
    """

    label = "voxelmorph"

    def __init__(self, dim, architecture="unet", enc_features=None, dec_features=None, start_channels=None,
                 levels=None, res_blocks=None, latent_blocks=None, flow_units=None, head_init=None,
                 integration_steps=0, in_channels=2):
        super().__init__()
        self.dim = check_dim(dim)
        self.architecture = check_choice(architecture, ARCHITECTURES, "architecture")
        given = dict(enc_features=enc_features, dec_features=dec_features, start_channels=start_channels,
                     levels=levels, res_blocks=res_blocks, latent_blocks=latent_blocks)
        unet = architecture != "residual"
        foreign = _RESIDUAL_KEYS if unet else _UNET_KEYS
        for key in foreign:
            if given[key] is not None:
                raise ConfigError(f"{key} applies to another VoxelMorph architecture, not {architecture!r}")
        if unet:
            if enc_features is None or dec_features is None:
                raise ConfigError(f"the {architecture} architecture needs enc_features and dec_features (or a preset)")
            enc = int_list(enc_features, "enc_features")
            dec = int_list(dec_features, "dec_features")
            self.backbone = _UNet(dim, in_channels, enc, dec, strided=architecture == "strided")
            self.levels = len(enc)
            head = conv(dim, self.backbone.out_channels, dim, 3)
        else:
            args = {k: (given[k] if given[k] is not None else v) for k, v in _RESIDUAL_DEFAULTS.items()}
            for key, value in args.items():
                if key in ("res_blocks", "latent_blocks"):
                    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                        raise ConfigError(f"{key} must be a non-negative integer, got {value!r}")
                else:
                    positive_int(value, key)
            self.backbone = _ResidualUNet(dim, in_channels, **args)
            self.levels = args["levels"]
            head = conv(dim, self.backbone.out_channels, dim, 1)
        if head_init is None:
            head_init = "normal" if unet else "zeros"
        init_head(head, head_init)
        self.head = head
        if flow_units is None:
            flow_units = "pixels" if unet else "normalised"
        self.output = FlowOutput(flow_units, integration_steps)

    def input_multiple(self):
        return 2 ** self.levels

    def _size_reason(self):
        return f"its {self.levels} down-samplings by 2"

    def forward(self, moving, fixed):
        """(batch, dim, *spatial) normalised displacement warping ``moving`` onto ``fixed``
        ((batch, 1, *spatial) each, every side a multiple of :meth:`input_multiple`)."""
        self.check_inputs(moving, fixed)
        x = self.backbone(torch.cat([moving, fixed], dim=1))
        return self.output(self.head(x))


__all__ = ["VoxelMorph"]
