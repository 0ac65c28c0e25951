"""FNOReg: the Fourier-Neural-Operator registration network (DESIGN.md A.2), for 2D and 3D.

Input ``[moving, fixed]`` -> lifting (1x1 conv) -> FFC residual block (encoder) -> L Fourier
layers ``y = GELU(K(x) + W(x)) + x`` -> FFC residual block (decoder) -> projection
(1x1 conv, ReLU, 1x1 conv) -> displacement in normalised coordinates, channel i along spatial
axis i. No layer depends on the input resolution: the spectral kernels keep a fixed set of low
modes, everything else is pointwise or spectral, so the same weights run at any resolution.

Three options make the transfer to a finer grid clean (issue 11; all off in the constructor, as
published; the configs switch on ``diffeomorphic`` and ``fold_repair``): ``band_limit`` low-passes
the output to the band of the grid the model was trained at (the model records the largest
training shape it has seen in its state dict), ``diffeomorphic`` makes the head predict a
stationary velocity integrated by scaling and squaring, and ``fold_repair`` smooths the field
locally where the map still folds (:mod:`models.foldrepair`).
"""

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from utils.errors import ConfigError
from utils.fields import check_image_pair
from utils.precision import in_float32

from .bandlimit import band_limit as _band_limit
from .batchnorm import frozen_statistics
from .ffc import FFCResidualBlock
from .foldrepair import fold_check, repair_folds
from .integrate import ScalingSquaring
from .nd import check_dim, conv
from .spectral import SpectralConv
from .spectral_ops import FourierLayerFunction

FACTORIZATIONS = ("tucker", "cp", "tt", "dense")
HEAD_INITS = ("zeros", "normal", "default")
SPECTRAL_INITS = ("released", "neuraloperator")


class FourierLayer(nn.Module):
    """One Fourier layer: ``GELU(K(x) + W(x))``, plus ``x`` when ``residual`` (FNOReg's variant).

    ``K`` is neuraloperator's spectral convolution keeping ``n_modes`` low modes (no bias: ``W``
    has one) and ``W`` is a 1x1 convolution with bias. ``spectral_init`` sets the standard
    deviation of ``K``'s (reconstructed) weight: "released", ``1 / C^2`` as neuraloperator 0.2
    drew it for the released code, or "neuraloperator", ``sqrt(2 / (2 C))`` as neuraloperator
    2.0 draws it (41-177 times larger for the presets).
    """

    def __init__(self, dim, channels, n_modes, factorization="tucker", rank=0.42, residual=True,
                 spectral_init="released"):
        super().__init__()
        self.spectral = SpectralConv(
            channels,
            channels,
            n_modes=tuple(n_modes),
            bias=False,
            factorization=None if factorization == "dense" else factorization,
            rank=rank,
        )
        if spectral_init == "released":
            # neuraloperator 0.2's FactorizedSpectralConv ("auto" init_std), which the published runs used.
            self.spectral.weight.normal_(0, 1.0 / (channels * channels))
        self.pointwise = conv(dim, channels, channels, 1, bias=True)
        self.residual = residual

    @in_float32  # FFTs and complex weights: float32 under mixed precision
    def forward(self, x):
        if torch.is_grad_enabled():
            if self.spectral.bias is not None:  # not FNOReg's: the layers one by one
                y = F.gelu(self.spectral(x) + self.pointwise(x))
                return y + x if self.residual else y
            # Training: the whole layer as one autograd function (fewer passes over activations).
            slices, width, lead = self.spectral.kept_modes(x.shape[2:])
            c = x.shape[1]
            return FourierLayerFunction.apply(
                x, self.spectral.weight_for(slices), self.pointwise.weight.reshape(-1, c), self.pointwise.bias,
                width, lead, self.spectral.fft_norm, self.residual)
        # Inference: the same sum in fewer passes over the activations. W's bias rides on the
        # spectral output's zero frequency, W x accumulates into it, GELU and residual in place.
        b, c = x.shape[:2]
        # (In 3D the inverse FFTs can leave the spatial axes permuted in memory.)
        y = self.spectral(x, offset=self.pointwise.bias).contiguous()
        weight = self.pointwise.weight.reshape(-1, c).expand(b, -1, -1)
        y.view(b, weight.shape[1], -1).baddbmm_(weight, x.reshape(b, c, -1))
        torch.ops.aten.gelu_(y)
        return y.add_(x) if self.residual else y


def _positive_int(value, key):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return value


def _check_n_modes(n_modes, dim):
    if not isinstance(n_modes, (list, tuple)) or len(n_modes) != dim:
        raise ConfigError(
            f"n_modes {n_modes!r} must list one mode count per spatial axis: {dim} entries for a {dim}D model"
        )
    return tuple(_positive_int(m, "every n_modes entry") for m in n_modes)


class FNOReg(nn.Module):
    """FNOReg registration network, one implementation for 2D and 3D.

    Parameters
    ----------
    dim : int
        2 or 3 spatial dimensions.
    hidden_channels : int
        C, width of the Fourier layers and FFC blocks.
    projection_channels : int
        P, width of the projection head.
    n_layers : int
        L, number of Fourier layers.
    n_modes : sequence of int
        Modes kept per spatial axis (neuraloperator convention: low frequencies of both signs on
        every axis but the last; about half as many non-negative ones on the last).
    factorization : {"tucker", "cp", "tt", "dense"}
        Factorisation of the spectral weights ("tucker" as published).
    rank : float
        Factorisation rank as a fraction of the dense parameter count (0.42 as published).
    ffc_alpha : float
        Global-channel ratio of the FFC blocks (1.0 as published: global path only).
    ffc_fft_axes : {"all", "first"} or list of int
        Axes of the FFT in the FFC Fourier units. Default "all", as in the FFC paper and the
        released 3D code; "first" reproduces the released 2D code, whose Fourier unit transformed
        only the first spatial axis as a side effect of a default argument.
    ffc_fft_norm : {"ortho", "forward", "backward"}
        FFT normalisation in the FFC Fourier units ("ortho" as published).
    ffc_blocks : bool
        Use the FFC encoder and decoder blocks (True for FNOReg; False gives the plain-FNO baseline).
    residual : bool
        Add the residual after each Fourier layer's activation (True for FNOReg; False for plain FNO).
    spectral_init : {"released", "neuraloperator"}
        Initialisation of the spectral weights: "released" (default) draws them with standard
        deviation ``1 / C^2``, as neuraloperator 0.2 did for the released code (its pinned
        version); "neuraloperator" keeps neuraloperator 2.0's ``sqrt(2 / (2 C))``, which makes
        the untrained spectral path about as strong as the 1x1 one (``||K x|| / ||x||`` about 0.5
        instead of 0.003-0.02) and grows the activations through the layers (x15 in the medium
        preset, x47 in 3D, against x4 and x6).
    head_init : {"zeros", "normal", "default"}
        Initialisation of the last 1x1 convolution. "zeros" (default) makes the untrained model
        predict exactly zero displacement, so training starts from the identity; "normal" draws
        weights from N(0, 1e-5^2) with zero bias (VoxelMorph's choice); "default" keeps PyTorch's
        initialisation, as the released code did, which starts training from a scrambled warp
        (DESIGN.md B.2).
    band_limit : bool
        At a resolution finer than the training one, keep only the cosine frequencies of the
        output that the training grid holds (:func:`models.bandlimit.band_limit`); the identity at
        the training resolution and below. The training shape is recorded by the model itself:
        ``trained_shape``, a buffer in its state dict, holds per axis the largest size it was run
        at in training mode (zeros: never trained; then nothing is filtered).
    diffeomorphic : bool
        The head predicts a stationary velocity, integrated by scaling and squaring
        (:class:`models.integrate.ScalingSquaring`, reading the border displacement outside the
        image) into the returned displacement. With
        ``band_limit`` the velocity is band-limited before integration.
    integration_steps : int
        Scaling-and-squaring steps when ``diffeomorphic`` (7: the first step stays under half a
        pixel for velocities up to 64 pixels).
    fold_repair : bool
        Outside training, smooth the predicted field (the velocity when ``diffeomorphic``) around
        the pixels where its map folds, pass after pass until none does
        (:func:`models.foldrepair.repair_folds`); a field that does not fold is returned
        unchanged. Training sees the network's own field.
    checkpointing : bool
        Activation checkpointing in training over the FFC blocks and the Fourier layers: their
        activations are recomputed in the backward pass instead of kept, which trades about one
        extra forward pass for memory (what lets a full-size 3D training step fit; see the
        memory benchmark; checkpointing the projection and the integration too measured no lower
        peak). The recomputed batch norms leave their running statistics alone
        (:func:`models.batchnorm.frozen_statistics`). Same results; no effect in inference.
    in_channels : int
        Input channels: 2 for ``[moving, fixed]``.
    """

    def __init__(
        self,
        dim,
        hidden_channels,
        projection_channels,
        n_layers,
        n_modes,
        factorization="tucker",
        rank=0.42,
        ffc_alpha=1.0,
        ffc_fft_axes="all",
        ffc_fft_norm="ortho",
        ffc_blocks=True,
        residual=True,
        head_init="zeros",
        spectral_init="released",
        band_limit=False,
        diffeomorphic=False,
        integration_steps=7,
        fold_repair=False,
        checkpointing=False,
        in_channels=2,
    ):
        super().__init__()
        self.dim = check_dim(dim)
        channels = _positive_int(hidden_channels, "hidden_channels")
        _positive_int(projection_channels, "projection_channels")
        _positive_int(n_layers, "n_layers")
        n_modes = _check_n_modes(n_modes, dim)
        if factorization not in FACTORIZATIONS:
            raise ConfigError(f"factorization must be one of {FACTORIZATIONS}, got {factorization!r}")
        if isinstance(rank, bool) or not isinstance(rank, (int, float)) or rank <= 0:
            raise ConfigError(f"rank must be a positive number, got {rank!r}")
        if head_init not in HEAD_INITS:
            raise ConfigError(f"head_init must be one of {HEAD_INITS}, got {head_init!r}")
        if spectral_init not in SPECTRAL_INITS:
            raise ConfigError(f"spectral_init must be one of {SPECTRAL_INITS}, got {spectral_init!r}")
        if isinstance(ffc_alpha, bool) or not isinstance(ffc_alpha, (int, float)):
            raise ConfigError(f"ffc_alpha must be a number in [0, 1], got {ffc_alpha!r}")
        for key, value in (("band_limit", band_limit), ("diffeomorphic", diffeomorphic),
                           ("fold_repair", fold_repair), ("checkpointing", checkpointing)):
            if not isinstance(value, bool):
                raise ConfigError(f"{key} must be true or false, got {value!r}")
        self.band_limit = band_limit
        self.fold_repair = fold_repair
        self.checkpointing = checkpointing
        # Border padding: zero padding folds the integrated map along the image border (models/integrate.py).
        self.integrate = (ScalingSquaring(_positive_int(integration_steps, "integration_steps"), padding="border")
                          if diffeomorphic else None)
        # Largest shape seen in training mode; saved with the weights, so a checkpoint knows it.
        self.register_buffer("trained_shape", torch.zeros(dim, dtype=torch.long))

        self.lifting = conv(dim, in_channels, channels, 1, bias=True)
        block = dict(alpha=float(ffc_alpha), fft_axes=ffc_fft_axes, fft_norm=ffc_fft_norm)
        self.encoder = FFCResidualBlock(dim, channels, **block) if ffc_blocks else nn.Identity()
        self.layers = nn.Sequential(
            *[FourierLayer(dim, channels, n_modes, factorization, rank, residual, spectral_init)
              for _ in range(n_layers)]
        )
        self.decoder = FFCResidualBlock(dim, channels, **block) if ffc_blocks else nn.Identity()
        self.projection = nn.Sequential(
            conv(dim, channels, projection_channels, 1, bias=True),
            nn.ReLU(),
            conv(dim, projection_channels, dim, 1, bias=True),
        )
        self._init_head(head_init)

    def _init_head(self, head_init):
        head = self.projection[-1]
        if head_init == "zeros":
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        elif head_init == "normal":
            nn.init.normal_(head.weight, std=1e-5)
            nn.init.zeros_(head.bias)

    def forward(self, moving, fixed):
        """Predict the displacement that warps ``moving`` onto ``fixed``.

        Parameters
        ----------
        moving, fixed : torch.Tensor
            (batch, 1, *spatial) images of the same shape, any resolution.

        Returns
        -------
        torch.Tensor
            (batch, dim, *spatial) displacement in normalised coordinates ([-1, 1] per axis,
            ``align_corners=True``); channel i is the displacement along spatial axis i.
        """
        check_image_pair(moving, fixed, self.dim)
        shape = moving.shape[2:]
        if self.training:
            for axis, n in enumerate(shape):  # on the device: no copy from the host each step
                self.trained_shape[axis].clamp_(min=n)
        return self.field(self.network(moving, fixed))

    def network(self, moving, fixed):
        """The network's own output, (batch, dim, *spatial), for inputs already checked.

        A velocity when ``diffeomorphic``, else the displacement; before :meth:`field`'s band
        limit, integration and fold repair.
        """
        x = self.lifting(torch.cat([moving, fixed], dim=1))
        x = self._block(self.encoder, x)
        for layer in self.layers:
            x = self._block(layer, x)
        return self._project(self._block(self.decoder, x))

    @in_float32
    def field(self, raw):
        """The displacement from :meth:`network`'s output: band limit, integration, fold repair.

        The band limit and the fold repair act in evaluation only, as in :meth:`forward`.
        """
        if self.band_limit and not self.training:
            raw = _band_limit(raw, self.trained_shape.tolist())
        if self.fold_repair and not self.training:
            return repair_folds(raw, self.integrate)[0]
        return self.integrate(raw) if self.integrate is not None else raw

    def graph_parts(self):
        """``(core, finish)``: the inference call split for a CUDA graph (:mod:`utils.cuda_graphs`).

        ``core(moving, fixed)`` holds no host synchronisation and is captured; ``finish`` (None:
        nothing) runs eagerly on its output (a tuple is passed as arguments). The band limit
        reads the training shape on the host, so with it the core ends at the network's output.
        The fold repair branches on whether anything folds: the core also integrates and checks
        for folds (:func:`models.foldrepair.fold_check`), and ``finish`` reads that one flag and
        repairs only when it is set. Otherwise the core is the whole forward pass.
        """
        def checked_network(moving, fixed):
            check_image_pair(moving, fixed, self.dim)
            return self.network(moving, fixed)

        if self.band_limit:
            return checked_network, self.field
        if self.fold_repair:
            def core(moving, fixed):  # the network, the integration and the fold check
                raw = checked_network(moving, fixed)
                return (raw, *fold_check(raw, self.integrate))

            def finish(raw, flow, folds):  # one host read; the repair itself only where something folds
                return repair_folds(raw, self.integrate)[0] if bool(folds) else flow

            return core, finish
        return self.forward, None

    def _block(self, block, x):
        """``block(x)``, checkpointed in training when ``checkpointing`` is on."""
        active = self.checkpointing and self.training and torch.is_grad_enabled()
        if not active or isinstance(block, nn.Identity):
            return block(x)
        # The recomputation in the backward pass must not update batch-norm statistics again.
        return checkpoint(block, x, use_reentrant=False,
                          context_fn=lambda: (contextlib.nullcontext(), frozen_statistics(block)))

    def _project(self, x):
        if torch.is_grad_enabled():
            return self.projection(x)
        # Inference: the hidden ReLU in place (its input is a fresh P-channel tensor).
        first, _, last = self.projection
        return last(first(x).relu_())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before the model recorded its training shape: keep "unknown" (zeros).
        state_dict.setdefault(prefix + "trained_shape", torch.zeros_like(self.trained_shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
