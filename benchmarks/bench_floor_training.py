"""An FNOReg 2D training step against its kernels' floor: can the step reach a throughput at all?

``bench_floor.py`` answers "how far is inference from its essential work"; this is the same for
one full training step (forward, loss, backward, Adam) at the config's batch size, so that a
throughput target can be checked against what the step's own kernels allow. Each kernel is timed
alone on contiguous operands at the exact shape the step uses, in the same run as the step:

- per Fourier layer, forward: the real FFT along the last axis, the FFT of the kept columns, the
  contraction of the kept modes (real block form, one weight per layer), the inverse FFT of the
  kept columns, the inverse real FFT, the 1x1 product accumulated into the spectral output, the
  GELU (out of place: its input is kept for the backward) and the residual add; backward: the
  GELU's backward, the same four transforms again (the adjoint of a transform is a transform of
  the same size), the two adjoint contractions (input and weight), the 1x1 product's input and
  weight gradients, the bias gradient and the residual add; and the rebuild of the layer's
  Tucker-factorised weight, forward and backward, as the model runs it (a chain of small matrix
  products, compute-bound; counted whole);
- per FFC (alpha = 1): the reduce and expand 1x1 products, the batch norms with batch statistics
  (statistics, normalisation) and ReLUs, the Fourier unit's real FFT, 1x1 product on the stacked
  spectrum and inverse real FFT, the skip add, and the backward of each: the ReLU masks, the batch
  norms' backward, the products' input and weight gradients, the transforms again;
- the rest of the step as the model runs it (counted whole, so an upper bound of its floor):
  the lifting and the projection with their backward, the warp and the loss with their
  backward, and Adam's update.

What the floor leaves out is overhead: layout copies (the stacking of real and imaginary parts,
the moves of the half-spectrum axis), the gather and scatter of the kept modes, allocation,
autograd's bookkeeping and Python dispatch. Its batch divided by the floor is the throughput the
step could reach if all of that were free: a throughput target above it cannot be met by
rearranging these kernels, only by faster kernels (fusion across them, other FFTs).

    python benchmarks/bench_floor_training.py --preset small --shape 80 96 --threads 2
"""

import math
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_floor import ffc_count, floor_lines, floor_parser, inplace_add, timed, write_floor  # noqa: E402
from benchmarks.bench_speed import training_fn  # noqa: E402
from benchmarks.common import (  # noqa: E402
    build,
    finish_machine_info,
    machine_info,
    make_entry,
    set_threads,
    time_call,
)
from losses import RegistrationLoss  # noqa: E402
from models import warp  # noqa: E402
from models.batchnorm import batch_statistics  # noqa: E402


def _bmm(b, c_in, c_out, pixels):
    """A 1x1 convolution as the model runs it on the CPU: ``(b, c_out, c_in) x (b, c_in, pixels)``."""
    w, x = torch.randn(c_out, c_in).expand(b, -1, -1), torch.randn(b, c_in, pixels)
    return lambda: torch.bmm(w, x)


def _weight_grad(b, c_in, c_out, pixels):
    """A 1x1 convolution's weight gradient: ``sum_b g_b x_b^T``."""
    g, x = torch.randn(b, c_out, pixels), torch.randn(b, c_in, pixels)
    return lambda: torch.bmm(g, x.transpose(1, 2)).sum(0)


def _add_out(shape):
    """``a + b`` into a new tensor (training keeps both operands for autograd)."""
    a, b = torch.randn(shape), torch.randn(shape)
    return lambda: a + b


def _bn_relu(shape):
    """Batch norm with batch statistics and ReLU, forward: the model's statistics
    (:func:`models.batchnorm.batch_statistics`), then normalise + ReLU."""
    x = torch.randn(shape)
    c = shape[1]
    w, bias = torch.ones(c), torch.zeros(c)
    return lambda: F.batch_norm(x, *batch_statistics(x), w, bias, False, 0.0, 1e-5).relu_()


def _bn_relu_backward(shape):
    """The ReLU mask and the batch norm's backward (PyTorch's kernels, as the model's backward)."""
    x, g = torch.randn(shape), torch.randn(shape)
    y = x.relu()
    c = shape[1]
    w, mean, invstd = torch.ones(c), torch.zeros(c), torch.ones(c)
    mask = [True, True, True]
    return lambda: torch.ops.aten.native_batch_norm_backward(
        torch.ops.aten.threshold_backward(g, y, 0), x, w, None, None, mean, invstd, True, 1e-5, mask)


def fourier_layer_training(b, c, shape, width, rows, n_layers):
    """{name: call or tuple of calls} for one Fourier layer's training kernels, forward and backward."""
    h, w = shape
    x = torch.randn(b, c, h, w)
    cols = torch.randn(b, c, width, h, dtype=torch.cfloat)  # kept columns, transformed along h
    spec = torch.randn(b, c, h, w // 2 + 1, dtype=torch.cfloat)
    m = width * rows
    weights = [torch.randn(m, c, 2 * c) for _ in range(n_layers)]  # each layer reads its own
    operand, grads = torch.randn(m, 2 * b, c), torch.randn(m, 2 * b, 2 * c)
    turn = iter(range(10**9))
    pre, out, g = torch.randn(b, c, h * w), torch.randn(b, c, h * w), torch.randn(b, c, h * w)
    pw = torch.randn(c, c).expand(b, -1, -1)
    transforms = (lambda: torch.fft.rfft(x, dim=-1), lambda: torch.fft.fft(cols, dim=-1),
                  lambda: torch.fft.ifft(cols, dim=-1), lambda: torch.fft.irfft(spec, n=w, dim=-1))
    return {
        "forward: rfft, fft and ifft of the kept columns, irfft": transforms,
        "forward: contraction": lambda: torch.bmm(operand, weights[next(turn) % n_layers]),
        "forward: 1x1 accumulated, GELU, residual add": (
            lambda: pre.baddbmm_(pw, out), lambda: F.gelu(pre).add_(out)),
        "backward: GELU": lambda: torch.ops.aten.gelu_backward(g, pre),
        "backward: the four transforms again": transforms,
        "backward: adjoint contractions (input, weight)": (
            lambda: torch.bmm(grads, weights[next(turn) % n_layers].transpose(1, 2)),
            lambda: torch.bmm(operand.transpose(1, 2), grads)),
        "backward: 1x1 input gradient accumulated, residual add": (
            lambda: out.baddbmm_(pw.transpose(1, 2), g), inplace_add((b, c, h * w))),
        "backward: 1x1 weight and bias gradients": (
            _weight_grad(b, c, c, h * w), lambda: g.sum((0, 2))),
    }


def ffc_training(b, c, shape):
    """{name: call or tuple of calls} for one FFC's (alpha = 1) training kernels, forward and backward."""
    h, w = shape
    half = c // 2
    pixels, spec_pixels = h * w, h * (w // 2 + 1)
    z = torch.randn(b, half, h, w)
    spec = torch.fft.rfft2(z)
    return {
        "forward: reduce 1x1, BN + ReLU": (_bmm(b, c, half, pixels), _bn_relu((b, half, h, w))),
        "forward: rfft2, irfft2": (lambda: torch.fft.rfft2(z), lambda: torch.fft.irfft2(spec, s=(h, w))),
        "forward: 1x1 on the spectrum, BN + ReLU": (
            _bmm(b, 2 * half, 2 * half, spec_pixels), _bn_relu((b, 2 * half, spec_pixels))),
        "forward: skip add, expand 1x1, BN + ReLU": (
            _add_out((b, half, pixels)), _bmm(b, half, c, pixels), _bn_relu((b, c, h, w))),
        "backward: expand (BN + ReLU, input and weight gradients)": (
            _bn_relu_backward((b, c, h, w)), _bmm(b, c, half, pixels), _weight_grad(b, half, c, pixels)),
        "backward: rfft2, irfft2": (lambda: torch.fft.rfft2(z), lambda: torch.fft.irfft2(spec, s=(h, w))),
        "backward: spectrum (BN + ReLU, input and weight gradients)": (
            _bn_relu_backward((b, 2 * half, spec_pixels)), _bmm(b, 2 * half, 2 * half, spec_pixels),
            _weight_grad(b, 2 * half, 2 * half, spec_pixels)),
        "backward: skip add, reduce (BN + ReLU, input and weight gradients)": (
            inplace_add((b, half, pixels)), _bn_relu_backward((b, half, h, w)), _bmm(b, half, c, pixels),
            _weight_grad(b, c, half, pixels)),
    }


def _forward_backward(fn, *inputs):
    """fn(*inputs) and its backward with a fixed upstream gradient (one zero-argument call)."""
    upstream = torch.randn_like(fn(*inputs))  # drawn once: drawing takes longer than a pass

    def call():
        fn(*inputs).backward(upstream)
    return call


def rest_of_step(model, entry, shape, batch):
    """{name: call}: lifting, projection, warp + loss and Adam, each as the model runs it."""
    h, w = shape
    c = model.lifting.out_channels
    pair = torch.rand(batch, 2, h, w)
    features = torch.randn(batch, c, h, w, requires_grad=True)
    loss_fn = RegistrationLoss(**entry.loss_settings(2))
    moving, fixed = torch.rand(2, batch, 1, h, w)
    flow = (0.01 * torch.randn(batch, 2, h, w)).requires_grad_()

    def warp_and_loss():
        total, _ = loss_fn(fixed, warp(moving, flow), flow)
        total.backward()

    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer = torch.optim.Adam(params, lr=1e-12, foreach=True)  # the trainer's; lr ~ 0: weights stay
    return {
        "lifting 1x1, forward + backward": _forward_backward(model.lifting, pair),
        "projection, forward + backward": _forward_backward(model.projection, features),
        "warp and loss, forward + backward": warp_and_loss,
        "Adam update": optimizer.step,
    }


def tucker_rebuild(layer, shape):
    """The layer's weight rebuild for ``shape``, forward and backward, as the model runs it."""
    slices, _, _ = layer.spectral.kept_modes(shape)
    upstream = torch.randn_like(torch.view_as_real(layer.spectral.weight_for(slices)))

    def call():
        torch.view_as_real(layer.spectral.weight_for(slices)).backward(upstream)
    return call


def training_floor_table(model, entry, shape, batch, repeats):
    """Rows (part, count, seconds each) of a training step's floor (2D FNOReg)."""
    c = model.lifting.out_channels
    layer = model.layers[0]
    _, width, lead = layer.spectral.kept_modes(shape)
    rows_kept = lead[0][1] - lead[0][0] + 1
    n_layers = len(model.layers)
    rows = []
    for name, call in fourier_layer_training(batch, c, shape, width, rows_kept, n_layers).items():
        rows.append((f"Fourier layer {name}", n_layers, timed(call, repeats)))
    with torch.enable_grad():
        rows.append(("Fourier layer: Tucker weight rebuild, forward + backward (as run)", n_layers,
                     timed(tucker_rebuild(layer, shape), repeats)))
    n_ffc = ffc_count(model)
    if n_ffc:
        for name, call in ffc_training(batch, c, shape).items():
            rows.append((f"FFC {name}", n_ffc, timed(call, repeats)))
        rows.append(("FFC block residual add", 2, timed(_add_out((batch, c) + tuple(shape)), repeats)))
    for name, call in rest_of_step(model, entry, shape, batch).items():
        rows.append((f"{name} (as run)", 1, timed(call, repeats)))
    return rows


def main(argv=None):
    args = floor_parser(__doc__.splitlines()[0], "small", (80, 96), "floor_training").parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(0)
    info = machine_info("cpu")
    shape = tuple(args.shape)
    entry = make_entry("fnoreg", args.preset)
    model = build(entry, 2, "cpu").train()
    step, batch, _ = training_fn(model, entry, 2, shape, torch.device("cpu"))
    before = time_call(step, "cpu", args.repeats)
    rows = training_floor_table(build(entry, 2, "cpu").train(), entry, shape, batch, args.repeats)
    after = time_call(step, "cpu", args.repeats)  # again after the kernels, so a drifting machine shows
    finish_machine_info(info)
    floor = sum(n * s for _, n, s in rows)
    as_run = sum(n * s for name, n, s in rows if "(as run)" in name)
    step_ms = 1000 * statistics.median(before["times"] + after["times"] or [before["seconds"], after["seconds"]])
    lines = floor_lines(f"FNOReg {args.preset} training step against its kernels' floor, {shape[0]}x{shape[1]}, "
                        f"batch {batch}", info, "bench_floor_training.py", argv, rows)
    lines += [f"Parts timed as the model runs them (an upper bound of their own floor): {1000 * as_run:.1f} ms.", "",
              f"Training step: {1000 * before['seconds']:.1f} ms before the kernels, {1000 * after['seconds']:.1f} ms "
              f"after (median of {args.repeats} each); the median of all {2 * args.repeats} steps, {step_ms:.1f} ms, "
              f"is **{step_ms / (1000 * floor):.2f}x the floor**: {1000 * batch / step_ms:.1f} pairs/s, against "
              f"**{batch / floor:.1f} pairs/s at the floor**."]
    write_floor(args.out, "floor_training", lines, {
        "machine": info, "preset": args.preset, "shape": shape, "batch": batch, "threads": args.threads,
        "step_ms": [1000 * before["seconds"], 1000 * after["seconds"]], "step_median_ms": step_ms,
        "floor_ms": 1000 * floor, "as_run_ms": 1000 * as_run, "pairs_per_s_at_floor": batch / floor,
        "rows": rows, "ratio": step_ms / (1000 * floor)})
    return 0 if math.isfinite(floor) else 1


if __name__ == "__main__":
    sys.exit(main())
