"""TransMorph (Chen et al., Medical Image Analysis 2022): a Swin-transformer registration network,
one implementation for 2D and 3D, written on torch alone.

Rebuilt from the paper and the structure of the public code (not a copy): ``[moving, fixed]`` ->
patch embedding (4x4(x4) patches, stride 4, LayerNorm) -> Swin stages of ``depths[i]`` blocks at
``embed_dim * 2**i`` channels, each block ``x + MSA(LN(x))`` then ``x + MLP(LN(x))`` with
window attention over ``window_size`` windows, a learned relative-position bias, every second
block on windows shifted by half a window (with the usual mask), patch merging (2x down-sampling,
LayerNorm then a linear map to twice the channels) between stages, a LayerNorm on each stage's
output -> a convolutional decoder: 2x up-sampling (bilinear/trilinear), concatenation with the
skip feature, two conv-InstanceNorm-LeakyReLU layers, up from the deepest stage to full
resolution; the last two skips are convolutions of the input at 1/2 and full resolution ->
a 3x3 registration head (N(0, 1e-5^2), zero bias) predicting the displacement in pixels, which
:class:`models.heads.FlowOutput` turns into the normalised field every model returns.

Sizes. The decoder concatenates each up-sampled map with a skip feature of the same size, so every
side must be a multiple of ``4 * 2**(len(depths) - 1)``: 32 for the published four stages. That
takes 160x192 (stage maps 40x48, 20x24, 10x12, 5x6: the published windows (5, 6) tile every
stage) and 160x192x224 (windows (5, 6, 7)), but *not* half resolution: 80x96 would leave a
2.5x3 deepest stage, so the model refuses it with the usual one-line error. With three stages
(``depths [2, 2, 4]``, ``num_heads [4, 4, 8]``: the ``3stage`` preset) sides must be multiples of 16 and
both 80x96 (stage maps 20x24, 10x12, 5x6) and 160x192 work, the windows still tiling every stage.
When a stage map is smaller than the window along an axis, the window shrinks to the map and
is not shifted along it (as in the Swin paper); when it is larger but not a multiple, the map is
zero-padded to whole windows (as in TransMorph's code).
"""

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from utils.device import device_constant
from utils.errors import ConfigError

from .heads import FlowOutput, init_head, int_list, positive_int
from .nd import avg_pool, check_dim, conv, instance_norm
from .sizes import InputShapeMixin

PATCH_SIZE = 4
DEFAULT_WINDOW = {2: (5, 6), 3: (5, 6, 7)}


class _DropPath(nn.Module):
    """Stochastic depth: drop the residual branch of whole samples with probability ``p`` in training."""

    def __init__(self, p):
        super().__init__()
        self.p = float(p)

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype) >= self.p
        return x * keep / (1.0 - self.p)


def _windows(x, window):
    """(B, *S, C) with S a multiple of ``window`` -> (B * n_windows, prod(window), C)."""
    b, c, d = x.shape[0], x.shape[-1], len(window)
    spatial = x.shape[1:-1]
    shape = [b]
    for n, w in zip(spatial, window):
        shape += [n // w, w]
    x = x.view(*shape, c)
    order = [0] + [1 + 2 * i for i in range(d)] + [2 + 2 * i for i in range(d)] + [2 * d + 1]
    return x.permute(*order).reshape(-1, math.prod(window), c)


@device_constant(maxsize=8)
def _shift_mask(padded, window, shift, device):
    """(n_windows, N, N) additive mask that keeps shifted windows from mixing distant regions.

    A constant of the padded shape, window and shift: built on the host once and kept per
    device (built on a GPU in every block's call, its region labels were written from the host
    each time, and a CUDA graph could not capture the call). Never write into it. Kept: one per
    stage and input size (a 3D model at 160x192x224 keeps about 100 MB, its first stage's 90).
    """
    slices = [((slice(0, -w), slice(-w, -s), slice(-s, None)) if s else (slice(None),))
              for w, s in zip(window, shift)]
    regions = torch.zeros((1, *padded, 1))
    for label, index in enumerate(itertools.product(*slices)):
        regions[(slice(None), *index, slice(None))] = label
    regions = _windows(regions, window).squeeze(-1)
    diff = regions[:, None, :] - regions[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0).to(device)


def _unwindows(windows, window, spatial, batch):
    """Inverse of :func:`_windows`."""
    d, c = len(window), windows.shape[-1]
    counts = [n // w for n, w in zip(spatial, window)]
    x = windows.view(batch, *counts, *window, c)
    order = [0]
    for i in range(d):
        order += [1 + i, 1 + d + i]
    return x.permute(*order, 2 * d + 1).reshape(batch, *spatial, c)


class _WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative-position bias."""

    def __init__(self, channels, window, heads, qkv_bias):
        super().__init__()
        if channels % heads:
            raise ConfigError(f"transmorph: {channels} channels cannot be split into {heads} attention heads")
        self.window = tuple(window)
        self.heads = heads
        self.scale = (channels // heads) ** -0.5
        self.bias_table = nn.Parameter(torch.zeros(math.prod(2 * w - 1 for w in window), heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        self.qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)

    def _bias(self, window, device):
        """(heads, N, N) bias for a window of size ``window`` (at most the configured one)."""
        coords = torch.stack(torch.meshgrid(*[torch.arange(w, device=device) for w in window], indexing="ij"))
        coords = coords.flatten(1)
        rel = coords[:, :, None] - coords[:, None, :]
        index = torch.zeros_like(rel[0])
        for axis, full in enumerate(self.window):
            index = index * (2 * full - 1) + rel[axis] + full - 1
        n = coords.shape[1]
        return self.bias_table[index.view(-1)].view(n, n, -1).permute(2, 0, 1)

    def forward(self, x, window, mask=None):
        bw, n, c = x.shape
        q, k, v = self.qkv(x).view(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1) + self._bias(window, x.device)
        if mask is not None:
            n_windows = mask.shape[0]
            attn = attn.view(bw // n_windows, n_windows, self.heads, n, n) + mask[None, :, None]
            attn = attn.view(bw, self.heads, n, n)
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj(out)


class _SwinBlock(nn.Module):
    def __init__(self, channels, heads, window, shifted, mlp_ratio, qkv_bias, drop_path):
        super().__init__()
        self.window = tuple(window)
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(channels)
        self.attn = _WindowAttention(channels, window, heads, qkv_bias)
        self.drop_path = _DropPath(drop_path)
        self.norm2 = nn.LayerNorm(channels)
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, channels))

    def forward(self, x):
        spatial = x.shape[1:-1]
        window = tuple(min(w, n) for w, n in zip(self.window, spatial))
        # TransMorph's code shifts a map as large as its window too (one window, split into
        # regions by the mask); only a map smaller than the window, which it shrinks to, is not.
        shift = tuple(w // 2 if self.shifted and n >= w else 0 for w, n in zip(self.window, spatial))
        shortcut = x
        x = self.norm1(x)
        pad = []
        for n, w in zip(reversed(spatial), reversed(window)):
            pad += [0, (w - n % w) % w]
        x = F.pad(x, [0, 0] + pad)
        padded = x.shape[1:-1]
        axes = tuple(range(1, len(spatial) + 1))
        mask = None
        if any(shift):
            x = torch.roll(x, [-s for s in shift], axes)
            mask = _shift_mask(tuple(padded), window, shift, x.device)
        x = _unwindows(self.attn(_windows(x, window), window, mask), window, padded, x.shape[0])
        if any(shift):
            x = torch.roll(x, list(shift), axes)
        x = x[(slice(None), *[slice(0, n) for n in spatial])]
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class _PatchMerging(nn.Module):
    """2x down-sampling: concatenate the 2**d sub-grids, LayerNorm, linear map to 2C channels."""

    def __init__(self, dim, channels):
        super().__init__()
        self.dim = dim
        self.norm = nn.LayerNorm(2 ** dim * channels)
        self.reduction = nn.Linear(2 ** dim * channels, 2 * channels, bias=False)

    def forward(self, x):
        pad = []
        for n in reversed(x.shape[1:-1]):
            pad += [0, n % 2]
        x = F.pad(x, [0, 0] + pad)
        parts = [x[(slice(None), *[slice(o, None, 2) for o in offsets])]
                 for offsets in itertools.product((0, 1), repeat=self.dim)]
        return self.reduction(self.norm(torch.cat(parts, dim=-1)))


class _ConvNormAct(nn.Sequential):
    """3x3 convolution (no bias), InstanceNorm, LeakyReLU: TransMorph's decoder layer."""

    def __init__(self, dim, c_in, c_out):
        super().__init__(conv(dim, c_in, c_out, 3, bias=False), instance_norm(dim, c_out), nn.LeakyReLU())


class _DecoderBlock(nn.Module):
    def __init__(self, dim, c_in, c_out, c_skip):
        super().__init__()
        self.mode = "bilinear" if dim == 2 else "trilinear"
        self.convs = nn.Sequential(_ConvNormAct(dim, c_in + c_skip, c_out), _ConvNormAct(dim, c_out, c_out))

    def forward(self, x, skip):
        x = F.interpolate(x, scale_factor=2, mode=self.mode, align_corners=False)
        return self.convs(torch.cat([x, skip], dim=1))


class TransMorph(InputShapeMixin, nn.Module):
    """TransMorph registration network (Swin encoder, convolutional decoder), 2D and 3D.

    Parameters
    ----------
    dim : int
        2 or 3 spatial dimensions.
    embed_dim : int
        C, channels of the first Swin stage (96 published; stage i has C * 2**i).
    depths : list of int
        Swin blocks per stage ([2, 2, 4, 2] published).
    num_heads : list of int
        Attention heads per stage ([4, 4, 8, 8] published).
    window_size : list of int, optional
        Attention window per axis; default (5, 6) in 2D (the FNOReg authors' 2D runs) and
        (5, 6, 7) in 3D (published).
    mlp_ratio : float
        Hidden width of the MLPs as a multiple of the channels (4).
    qkv_bias : bool
        Bias in the query/key/value projection (false, published).
    drop_path_rate : float
        Stochastic-depth rate, rising linearly over the blocks to this value (0.3, published).
    reg_head_channels : int
        Channels of the full-resolution decoder stage and the registration head's input (16).
    flow_units : {"pixels", "normalised"}
        What the head predicts ("pixels", as in the published code); the returned field is
        always normalised (see :mod:`models.heads`).
    head_init : {"normal", "zeros", "default"}
        Registration head's initialisation ("normal": N(0, 1e-5^2), zero bias, as published).
    integration_steps : int
        k > 0 integrates the field as a stationary velocity (TransMorph-diff style); 0 default.
    in_channels : int
        2 for ``[moving, fixed]``.
    """

    label = "transmorph"

    def __init__(self, dim, embed_dim=96, depths=(2, 2, 4, 2), num_heads=(4, 4, 8, 8), window_size=None,
                 mlp_ratio=4.0, qkv_bias=False, drop_path_rate=0.3, reg_head_channels=16, flow_units="pixels",
                 head_init="normal", integration_steps=0, in_channels=2):
        super().__init__()
        self.dim = check_dim(dim)
        c = positive_int(embed_dim, "embed_dim")
        depths = int_list(depths, "depths")
        heads = int_list(num_heads, "num_heads")
        if len(heads) != len(depths):
            raise ConfigError(f"num_heads {heads} needs one entry per stage of depths {depths}")
        if c % 2:
            raise ConfigError(f"embed_dim must be even (the 1/2-resolution skip has embed_dim / 2 channels), got {c}")
        window = DEFAULT_WINDOW[dim] if window_size is None else int_list(window_size, "window_size")
        if len(window) != dim:
            raise ConfigError(f"window_size {list(window)} needs one entry per spatial axis ({dim})")
        if isinstance(drop_path_rate, bool) or not isinstance(drop_path_rate, (int, float)) \
                or not 0 <= drop_path_rate < 1:
            raise ConfigError(f"drop_path_rate must be a number in [0, 1), got {drop_path_rate!r}")
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
            raise ConfigError(f"mlp_ratio must be a positive number, got {mlp_ratio!r}")
        if not isinstance(qkv_bias, bool):
            raise ConfigError(f"qkv_bias must be true or false, got {qkv_bias!r}")
        reg = positive_int(reg_head_channels, "reg_head_channels")
        self.n_stages = len(depths)

        self.patch_embed = conv(dim, in_channels, c, PATCH_SIZE, stride=PATCH_SIZE, padding=0)
        self.embed_norm = nn.LayerNorm(c)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        self.merges = nn.ModuleList()
        self.out_norms = nn.ModuleList()
        for i, (depth, n_heads) in enumerate(zip(depths, heads)):
            width = c * 2 ** i
            first = sum(depths[:i])
            self.stages.append(nn.Sequential(*[
                _SwinBlock(width, n_heads, window, j % 2 == 1, mlp_ratio, qkv_bias, rates[first + j])
                for j in range(depth)]))
            self.out_norms.append(nn.LayerNorm(width))
            if i < self.n_stages - 1:
                self.merges.append(_PatchMerging(dim, width))
        self.decoder = nn.ModuleList(
            [_DecoderBlock(dim, c * 2 ** i, c * 2 ** (i - 1), c * 2 ** (i - 1)) for i in range(self.n_stages - 1, 0, -1)]
        )
        self.up_half = _DecoderBlock(dim, c, c // 2, c // 2)
        self.up_full = _DecoderBlock(dim, c // 2, reg, reg)
        self.skip_half = _ConvNormAct(dim, in_channels, c // 2)
        self.skip_full = _ConvNormAct(dim, in_channels, reg)
        self.pool = avg_pool(dim, 3, stride=2, padding=1)
        self.head = conv(dim, reg, dim, 3)
        # Linear layers keep PyTorch's initialisation: TransMorph's code defines Swin's
        # trunc_normal(0.02) init_weights but never calls it.
        init_head(self.head, head_init)
        self.output = FlowOutput(flow_units, integration_steps)

    def input_multiple(self):
        return PATCH_SIZE * 2 ** (self.n_stages - 1)

    def _size_reason(self):
        return f"4x patches and {self.n_stages - 1} patch mergings"

    def _encode(self, x):
        """Swin features of every stage, channels first."""
        x = self.embed_norm(self.patch_embed(x).movedim(1, -1))
        features = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            features.append(self.out_norms[i](x).movedim(-1, 1))
            if i < self.n_stages - 1:
                x = self.merges[i](x)
        return features

    def forward(self, moving, fixed):
        """(batch, dim, *spatial) normalised displacement warping ``moving`` onto ``fixed``
        ((batch, 1, *spatial) each, every side a multiple of :meth:`input_multiple`)."""
        self.check_inputs(moving, fixed)
        x = torch.cat([moving, fixed], dim=1)
        skip_full = self.skip_full(x)
        skip_half = self.skip_half(self.pool(x))
        features = self._encode(x)
        y = features[-1]
        for block, skip in zip(self.decoder, reversed(features[:-1])):
            y = block(y, skip)
        y = self.up_full(self.up_half(y, skip_half), skip_full)
        return self.output(self.head(y))


__all__ = ["TransMorph"]
